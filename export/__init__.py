"""ONNX export of each network, TensorRT plan building and the keyed engine cache (see networks.py)."""
