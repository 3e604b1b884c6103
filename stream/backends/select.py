"""Choose the execution provider and model variant: TensorRT, then CUDA, then CPU, unless overridden.

`null` is never chosen by `auto`: it is the no-cost test double that measures the pipeline around a model.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from models.manifest import Manifest, verified_variant_path
from stream.backends.base import InferenceBackend
from stream.backends.null import NullBackend
from stream.backends.ort import CPU, CUDA, TENSORRT, OrtBackend, ProviderSpec, tensorrt_options

# Preferred variants per backend, best first. TensorRT builds its own fp16 engine from the fp32 graph.
VARIANT_PREFERENCE = {
    "tensorrt": ("fp32", "fp16"),
    "cuda": ("fp16", "fp32"),
    "cpu": ("int8", "fp32"),
    "null": ("int8", "fp32"),
}
PROVIDER_OF = {"tensorrt": TENSORRT, "cuda": CUDA, "cpu": CPU}


class BackendUnavailable(RuntimeError):
    """The requested backend's execution provider is not in this onnxruntime build."""


def choose_backend_name(requested: str, available: list[str]) -> str:
    if requested != "auto":
        if PROVIDER_OF[requested] not in available:
            raise BackendUnavailable(
                f"backend {requested!r} needs {PROVIDER_OF[requested]}, but this onnxruntime offers {available}"
            )
        return requested
    return next(name for name in ("tensorrt", "cuda", "cpu") if PROVIDER_OF[name] in available)


def choose_variant(backend_name: str, requested: str, manifest: Manifest) -> str:
    if requested != "auto":
        return requested
    for variant in VARIANT_PREFERENCE[backend_name]:
        if variant in manifest.variants:
            return variant
    return next(iter(manifest.variants))


def select_backend(
    model_dir: Path,
    manifest: Manifest,
    backend: str = "auto",
    variant: str = "auto",
    intra_op_threads: int = 0,
    max_batch_size: int = 64,
    tensorrt_cache_dir: Path | None = None,
) -> InferenceBackend:
    if backend == "null":
        chosen_variant = choose_variant("null", variant, manifest)
        return NullBackend.like(
            verified_variant_path(model_dir, manifest, chosen_variant), chosen_variant, max_batch_size
        )
    name = choose_backend_name(backend, ort.get_available_providers())
    chosen_variant = choose_variant(name, variant, manifest)
    path = verified_variant_path(model_dir, manifest, chosen_variant)
    providers: list[ProviderSpec]
    if name == "tensorrt":
        cache = tensorrt_cache_dir or model_dir / "tensorrt-cache"
        providers = [(TENSORRT, tensorrt_options(cache, max_batch_size, manifest.max_seq_len)), CUDA, CPU]
    elif name == "cuda":
        providers = [CUDA, CPU]
    else:
        providers = [CPU]
    return OrtBackend(path, providers, chosen_variant, intra_op_threads)
