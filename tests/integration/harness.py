"""The worker-process harness lives in `stream.harness` (the benchmark drives workers the same way)."""

from stream.harness import REPO_ROOT, Outputs, Topics, WorkerProcess, free_port, produce, read_outputs

__all__ = ["REPO_ROOT", "Outputs", "Topics", "WorkerProcess", "free_port", "produce", "read_outputs"]
