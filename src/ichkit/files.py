"""Atomic file writes: every stage writes its outputs through here, so an interrupted run (a killed job,
a full disk) never leaves a half-written file that a later run would take for a finished one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it is renamed onto `path` (atomic on
    one file system), when it fails it is removed. The parent folder is created if needed.

    The temporary name keeps the file's own suffix (``model.tmp123.keras`` for ``model.keras``): writers
    such as Keras 3 refuse a path whose suffix is not theirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
