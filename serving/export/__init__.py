"""ONNX export of each model family's sampling-time graphs (`families.FAMILIES`), with parity checks."""
