"""ONNX Runtime backends. One class; the execution provider decides CPU, CUDA or TensorRT."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from stream.backends.base import Outputs

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
BACKEND_NAMES = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt"}

ProviderSpec = str | tuple[str, dict[str, Any]]


def tensorrt_options(cache_dir: Path, max_batch_size: int, max_seq_len: int) -> dict[str, Any]:
    """fp16 engines cached on disk, with one optimisation profile spanning every batch shape we cut."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    shapes = {
        "min": (1, 8),
        "opt": (max(1, max_batch_size // 2), min(64, max_seq_len)),
        "max": (max_batch_size, max_seq_len),
    }

    def profile(batch: int, seq: int) -> str:
        return f"input_ids:{batch}x{seq},attention_mask:{batch}x{seq}"

    return {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": profile(*shapes["min"]),
        "trt_profile_opt_shapes": profile(*shapes["opt"]),
        "trt_profile_max_shapes": profile(*shapes["max"]),
    }


class OrtBackend:
    """An InferenceBackend over one ONNX Runtime session.

    On GPU providers inputs and outputs go through IO binding, so ORT does not allocate output
    buffers per call and the copy back to the host happens once per output.
    """

    def __init__(
        self,
        model_path: Path,
        providers: Sequence[ProviderSpec],
        variant: str,
        intra_op_threads: int = 0,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        # Spinning threads fight the tokenizer and the event loop for the same few cores (measured in
        # `socialpulse bench` on 2 cores); park them between batches instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=list(providers))
        self.provider: str = self._session.get_providers()[0]
        self.name: str = BACKEND_NAMES.get(self.provider, self.provider)
        self.variant = variant
        self._output_names = [output.name for output in self._session.get_outputs()]
        self._use_io_binding = self.provider in (CUDA, TENSORRT)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def run(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> Outputs:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._use_io_binding:
            binding = self._session.io_binding()
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            for name in self._output_names:
                binding.bind_output(name, "cuda")
            self._session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self._session.run(self._output_names, feeds)
        # fp16 graphs may return half precision; downstream maths is float32 throughout.
        return {
            name: np.asarray(value, dtype=np.float32) for name, value in zip(self._output_names, values, strict=True)
        }

    def warmup(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Run each shape once so kernels, the memory arena (and TensorRT engines) exist before traffic."""
        for batch_size, seq_len in shapes:
            ids = np.ones((batch_size, seq_len), dtype=np.int64)
            self.run(ids, np.ones_like(ids))
