"""The optimizer-hook probe now lives in the measurement contract (:mod:`trajlib.measure._hooks`),
left of both collect (the Recorder) and deploy; this module keeps its old import path."""

from trajlib.measure._hooks import LAYER_ROWS, PROBE_COLUMNS, STRIDED, StepProbe, summarise

__all__ = ["StepProbe", "PROBE_COLUMNS", "LAYER_ROWS", "STRIDED", "summarise"]
