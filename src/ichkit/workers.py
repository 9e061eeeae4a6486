"""Worker processes: how many, and the one way every stage starts a pool of them.

    from ichkit.workers import process_pool, worker_count

    n = worker_count(cfg["prepare"]["workers"], jobs=len(chunks), key="prepare.workers")
    with process_pool(n, initializer=_init_worker, initargs=(...,), preload=("cv2", "ichkit.dicom")) as pool:
        futures = [pool.submit(work, chunk) for chunk in chunks]

`worker_count` turns a setting (0 = all usable cores, as every `*.workers` key in default.yaml says) into a
count, never more than there are jobs. `process_pool` is a `concurrent.futures.ProcessPoolExecutor` with:

- one start method for the whole project, `forkserver`: workers start from a clean single-threaded server
  (forking a parent that runs threads, as TensorFlow and tqdm do, can deadlock), with `preload` modules
  imported once in the server instead of once per worker;
- workers that exit when their parent dies: each runs a watchdog thread on the parent's sentinel, so a
  SIGKILLed `prepare` or `features` leaves no 150-MB workers behind;
- workers that ignore SIGINT (Ctrl-C reaches the whole process group; the parent alone decides to stop);
- SIGTERM in the parent raised as KeyboardInterrupt while the pool is open, so `kill PID` stops a stage
  exactly like Ctrl-C: queued work is cancelled, running workers finish their item, nothing half-written.

Costs and rules of forkserver: the server starts once per parent process (about 1-3 s on 2 busy cores with
prepare's preload, then about 0.1 s per pool); the initializer, its arguments and the submitted functions
must be importable top-level objects; a script that calls a stage directly needs the usual
`if __name__ == "__main__":` guard (the workers import the main module). The `ichkit` CLI meets all three.

Users: prepare, features (`ichkit.features.pool`) and the phantom generator (`ichkit.phantom.dataset`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from ichkit.errors import IchkitError

START_METHOD = "forkserver"


class WorkerSettingError(IchkitError):
    """A worker-count setting that is not an integer >= 0."""


def usable_cores() -> int:
    """Cores this process may run on (the CPU affinity mask, which container limits set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(setting: Any, jobs: int | None = None, key: str = "workers") -> int:
    """`setting` workers (0 or None = all usable cores), at most `jobs` (when given), at least 1.

    `key` names the setting in the error for a negative or non-integer value.
    """
    try:
        n = 0 if setting is None else int(setting)
        if isinstance(setting, float) and setting != n:
            raise ValueError
    except (TypeError, ValueError):
        raise WorkerSettingError(f"{key} must be an integer >= 0 (0 = all cores), got {setting!r}") from None
    if n < 0:
        raise WorkerSettingError(f"{key} must be >= 0 (0 = all cores), got {n}")
    n = n or usable_cores()
    if jobs is not None:
        n = min(n, max(1, int(jobs)))
    return max(1, n)


def _start_worker(parent_pid: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None

    def watch() -> None:
        if sentinel is not None:
            multiprocessing.connection.wait([sentinel])
        else:  # no sentinel: poll whether the parent still exists
            while True:
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    break
                threading.Event().wait(1.0)
        os._exit(1)  # the parent is gone: nobody will read this worker's results

    threading.Thread(target=watch, name="ichkit-parent-watchdog", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While open (in the main thread), SIGTERM raises KeyboardInterrupt like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def process_pool(
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    preload: Sequence[str] = (),
) -> Iterator[ProcessPoolExecutor]:
    """A ProcessPoolExecutor of `workers` processes started the project's one way (see the module docstring).

    `initializer(*initargs)` runs once per worker (picklable, top-level); `preload` names modules the
    fork server imports once. On leaving the block normally the pool is joined; on an exception
    (KeyboardInterrupt from Ctrl-C or SIGTERM included) queued work is cancelled first.
    """
    ctx = multiprocessing.get_context(START_METHOD)
    if preload:
        ctx.set_forkserver_preload(list(preload))
    with sigterm_as_interrupt():
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_start_worker,
            initargs=(os.getpid(), initializer, tuple(initargs)),
        )
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
