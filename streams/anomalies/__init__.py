"""The anomaly detectors, plain classes with no Kafka or Faust in them (the validate stage runs them)."""

from streams.anomalies.detectors import Anomaly, AnomalyKind, Detector, DetectorSuite
from streams.config import AnomalySettings

__all__ = ["Anomaly", "AnomalyKind", "AnomalySettings", "Detector", "DetectorSuite"]
