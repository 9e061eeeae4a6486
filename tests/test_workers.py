"""ichkit.workers: the worker-count rule and the pool's SIGTERM-as-Ctrl-C (the parent-death watchdog is
tested end to end in test_prepare.py, on a killed multi-worker prepare)."""

from __future__ import annotations

import os
import signal

import pytest

from ichkit.workers import WorkerSettingError, sigterm_as_interrupt, usable_cores, worker_count


def test_worker_count_rule():
    assert worker_count(0) == worker_count(None) == usable_cores()
    assert worker_count(3) == 3 and worker_count(3, jobs=2) == 2 and worker_count(0, jobs=0) == 1
    assert worker_count("2") == 2
    for bad in (-1, "two", 1.5):
        with pytest.raises(WorkerSettingError, match=r"prepare\.workers must be"):
            worker_count(bad, key="prepare.workers")


def test_sigterm_raises_keyboard_interrupt_only_inside_the_block():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000_000):  # the Python-level handler runs between bytecodes
                pass
    assert signal.getsignal(signal.SIGTERM) == previous
