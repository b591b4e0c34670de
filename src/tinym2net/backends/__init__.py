"""Runtimes an artifact can run in: `litert` (LiteRT with XNNPACK) and `ort` (ONNX Runtime)."""
