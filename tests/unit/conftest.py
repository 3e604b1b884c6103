"""Fixtures shared by the unit tests that use the built default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.paths import default_model_dir


@pytest.fixture(scope="session")
def default_model() -> Path:
    """`models build` reuses a verified build for the current data + config + code (seconds), else trains one."""
    from models.build import build

    build()
    return default_model_dir()
