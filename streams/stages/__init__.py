"""What runs inside `faust worker`: the data plane.

produce (providers -> raw.<source>), validate (raw.* -> ticks.clean / ticks.rejected / ticks.anomalies, with
detect: the anomaly detection it runs per batch), write (ticks.clean -> PostgreSQL), archive (ticks.anomalies
and ticks.rejected -> PostgreSQL anomaly_events and dead_letters), metrics, retention. Shared by them: base (the
batch stage), publish (acknowledged sends, dead-letter records, per-partition transactions), topics (the
catalog's topic names and the start-up check against topics.yaml) and db (the worker's one PostgreSQL writer
and its read pool).
"""
