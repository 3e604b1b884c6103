"""Fixtures shared by the unit and integration tests that use a built model (the default one, the multilingual one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.paths import default_model_dir, models_dir


@pytest.fixture(scope="session")
def default_model() -> Path:
    """`models build` reuses a verified build for the current data + config + code (seconds), else trains one."""
    from models.build import build

    build()
    return default_model_dir()


@pytest.fixture(scope="session")
def multilingual_model() -> Path:
    """`models build --recipe multilingual`: reused when a verified build for its key exists, else trained."""
    from models.build import build, multilingual_recipe

    build(recipe=multilingual_recipe())
    return models_dir() / "multilingual"
