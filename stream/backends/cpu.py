"""What this CPU offers the int8 kernels: ONNX Runtime's MLAS picks its U8S8 MatMul by these flags.

Recorded next to every benchmark and evaluation figure, since int8 results and speed depend on them
(models/saturation.py says how).
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


@cache
def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str | bool]:
    """{model, vendor, <flag>: bool...} from the first processor in /proc/cpuinfo (Linux); flags False elsewhere."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if not line.strip():
                break
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    features: dict[str, str | bool] = {
        "model": fields.get("model name", platform.processor() or platform.machine()),
        "vendor": fields.get("vendor_id", ""),
    }
    features.update({flag: flag in flags for flag in INT8_FLAGS})
    features["int8_dot_product"] = "vnni" if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags else "vpmaddubsw"
    return features
