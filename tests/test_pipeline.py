"""The main job (`ichkit all`, what `bash run.sh` runs) end to end on a tiny phantom, and its re-run."""

from __future__ import annotations

import pandas as pd
import pytest

from ichkit.cli import main
from ichkit.labels import CLASSES7
from ichkit.oof import read_oof, read_test

MODELS = "logreg_radiomic,tree_radiomic"


@pytest.mark.slow
def test_all_makes_demo_data_and_runs_every_stage_then_skips_on_rerun(tmp_path, capsys):
    work, folds = tmp_path / "work", tmp_path / "folds" / "folds.csv"
    common = ["--work", str(work), "--set", f"paths.input={tmp_path / 'input'}",
              "--set", f"demo.out={tmp_path / 'input' / 'demo'}", "--set", "demo.patients=8",
              "--set", f"paths.folds={folds}", "--set", "folds.k=2"]
    assert main(["all", "--models", MODELS, *common]) == 0
    out = capsys.readouterr().out
    for stage in ("demo-data", "prepare", "folds", "train", "evaluate"):
        assert f"ichkit {stage}" in out
    assert (tmp_path / "input" / "demo" / "demo.json").is_file()
    assert "2 quarantined" in out  # the phantom's two broken files, reported, not fatal

    table = pd.read_parquet(work / "table.parquet")
    assert set(table["status"]) == {"ok", "quarantined"}
    fold_of = pd.read_csv(folds)
    assert fold_of.groupby("patient_id")["fold"].nunique().max() == 1
    for model in MODELS.split(","):
        oof = read_oof(work, model)
        assert sorted(oof["image_id"]) == sorted(fold_of["image_id"])  # every training image once
        test = read_test(work, model)
        assert len(test) == int(((table["split"] == "test") & (table["status"] == "ok")).sum())
        assert oof[[f"prob_{c}" for c in CLASSES7]].sum(axis=1).round(4).eq(1).all()
    evaluation = pd.read_csv(work / "evaluation.csv")
    assert set(evaluation["model"]) == set(MODELS.split(","))

    # a second run finds the demo, the cache and the trained folds, and does no work again
    assert main(["all", "--models", MODELS, *common]) == 0
    out = capsys.readouterr().out
    assert "ichkit demo-data" not in out
    assert "0 prepared now" in out
