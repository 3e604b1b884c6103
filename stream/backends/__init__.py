"""Inference backends: one protocol, ONNX Runtime CPU / CUDA / TensorRT behind it."""

from stream.backends.base import InferenceBackend, Outputs
from stream.backends.select import BackendUnavailable, select_backend

__all__ = ["BackendUnavailable", "InferenceBackend", "Outputs", "select_backend"]
