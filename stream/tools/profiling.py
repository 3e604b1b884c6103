"""py-spy attached to a worker process, and a summary of where its samples went.

`socialpulse bench --profile` records the ceiling worker (null backend) while it drains; the summary
(self and inclusive share per function) goes into the bench's JSON and bench/README.md.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


class Profiler:
    """`py-spy record` on a running pid, writing collapsed stacks (one `frame;frame;... count` per line)."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        executable = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out = out
        self._process = subprocess.Popen(
            [executable, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
             "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> Path:
        """SIGINT makes py-spy write what it has."""
        self._process.send_signal(signal.SIGINT)
        self._process.wait(timeout=60)
        return self.out


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    samples: int
    # function -> share of samples where it is the innermost frame / anywhere on the stack
    self_share: dict[str, float]
    inclusive_share: dict[str, float]


def _function(frame: str) -> str:
    # py-spy frames read "name (path/to/file.py:line)"; drop the line so a function is one row.
    name, _, location = frame.partition(" (")
    path = location.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-2:])
    return f"{name} ({short})"


def summarise(collapsed: Path, top: int = 25, thread: str | None = "MainThread") -> ProfileSummary:
    """Top functions by self and inclusive share of the samples (of one thread's, when `thread` is given)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if thread is not None and not (frames and thread in frames[0]):
            continue
        count = int(count_text)
        functions = [_function(frame) for frame in frames[1:]]
        if not functions:
            continue
        total += count
        own[functions[-1]] += count
        for function in set(functions):
            anywhere[function] += count
    scale = 1 / max(total, 1)
    return ProfileSummary(
        samples=total,
        self_share={name: round(count * scale, 4) for name, count in own.most_common(top)},
        inclusive_share={name: round(count * scale, 4) for name, count in anywhere.most_common(top)},
    )
