"""Atomic writes: a failed write leaves the old file (or none) and no temporary behind."""

from __future__ import annotations

import pytest

from ichkit.files import atomic_path, write_text_atomic


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "table.json"
    write_text_atomic(target, "old")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half writ")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert list(target.parent.iterdir()) == [target]  # no .tmp left
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new"


def test_the_temporary_keeps_the_suffix(tmp_path):
    # Keras 3 refuses `x.keras.tmp`: writers that check the suffix must see their own
    with atomic_path(tmp_path / "model.keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path and tmp.name != "model.keras"
        tmp.write_text("weights")
    assert (tmp_path / "model.keras").read_text() == "weights"
