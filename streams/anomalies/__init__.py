"""The anomaly detectors, plain classes with no Kafka or Faust in them (the validate stage runs them).

Compiled with mypyc when a build of these sources exists (streams/anomalies/native.py); `NATIVE` says which.
"""

from streams.anomalies import native

NATIVE = native.activate(__path__)  # before any detector module is imported

from streams.anomalies.detectors import Anomaly, AnomalyKind, Detector, DetectorSuite  # noqa: E402
from streams.config import AnomalySettings  # noqa: E402

__all__ = ["NATIVE", "Anomaly", "AnomalyKind", "AnomalySettings", "Detector", "DetectorSuite"]
