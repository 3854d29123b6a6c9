"""The exported model: its format, export (StableHLO, ONNX), loading without training code."""
