"""What runs inside `faust worker`: the data plane.

produce (providers -> raw.<source>), validate (raw.* -> ticks.clean / ticks.rejected / ticks.anomalies),
write (ticks.clean -> PostgreSQL), metrics, retention; base is the batch stage they share.
"""
