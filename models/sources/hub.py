"""Encoders from the Hugging Face hub, for machines with internet (never used by the tests or the setup).

The folder has the same layout as the offline sources produce: config.json, model.safetensors and the
tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The hub's files for repo_id, downloaded into (or reused from) the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=FILES))
