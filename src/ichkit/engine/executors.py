"""Where (model, fold) units run: ``local`` (this process, one after another) or ``ray`` (one Ray task per
unit, on a local Ray instance or a cluster).

Ray: each unit is a task with the family's resources (`ModelSpec.num_cpus`; `ModelSpec.num_gpus` when the
cluster has GPUs, so a GPU family still runs on a CPU-only instance). The worker trains in a temporary
folder and returns the prediction frames and the fold folder's files; the driver writes them into its own
work folder, so the workers need no shared filesystem for outputs. They do read the inputs: the work
folder's table, cache and features (and folds.csv) must be readable at the same path on every node (a
shared mount, or a copy made before `ray start`). A killed Ray run restarts its unfinished folds from
zero unless its fold folders are on a shared filesystem (the local executor resumes from checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ichkit.errors import IchkitError

EXECUTORS: tuple[str, ...] = ("local", "ray")


class ExecutorError(IchkitError):
    """An executor that cannot run (unknown name, Ray not installed or not reachable)."""


class LocalExecutor:
    name = "local"

    def map(self, jobs: list) -> Iterator[Any]:
        from ichkit.engine.driver import run_unit

        for job in jobs:
            yield run_unit(job)


class RayExecutor:
    """Runs units as Ray tasks; `ray.init(address)` unless Ray is already initialised in this process."""

    name = "ray"

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None) -> None:
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install 'ray[default]' (see requirements.txt)") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False, **self.init_kwargs)
            except ConnectionError as exc:
                raise ExecutorError(f"cannot reach the Ray cluster at {self.address!r}: {exc}") from None
        return ray

    def map(self, jobs: list) -> Iterator[Any]:
        if not jobs:
            return
        ray = self._ray()
        from ichkit.engine.driver import run_unit

        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        remote = ray.remote(run_unit)
        pending = []
        for job in jobs:
            job.ship_files = True
            if job.resume and job.fold_dir.is_dir():
                from ichkit.engine.driver import _read_files

                job.files = _read_files(job.fold_dir)
            options = {"num_cpus": float(job.spec.num_cpus),
                       "num_gpus": float(job.spec.num_gpus) if has_gpus else 0.0, "max_retries": 0}
            pending.append(remote.options(**options).remote(job))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])


def make_executor(name: str, address: str | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ExecutorError(f"unknown executor {name!r}; expected one of {EXECUTORS}")
