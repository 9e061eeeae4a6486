"""The main job (`ichkit all`, what `bash run.sh` runs) end to end on a tiny phantom, its re-run, and
`ichkit predict` of the trained run on a bare folder of DICOMs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ichkit.cli import main
from ichkit.labels import CLASSES7
from ichkit.oof import read_oof, read_test

MODELS = "logreg_radiomic,tree_radiomic"
SEG_MODEL = "hu_threshold_seg"  # the fast segmentation model: masks, RLE and volumes in the submission


@pytest.mark.slow
def test_all_makes_demo_data_and_runs_every_stage_then_skips_on_rerun(tmp_path, capsys):
    work, folds = tmp_path / "work", tmp_path / "folds" / "folds.csv"
    common = ["--work", str(work), "--set", f"paths.input={tmp_path / 'input'}",
              "--set", f"demo.out={tmp_path / 'input' / 'demo'}", "--set", "demo.patients=8",
              "--set", f"paths.folds={folds}", "--set", "folds.k=2",
              "--set", f"paths.submissions={tmp_path / 'submissions'}", "--set", f"seg.submit_model={SEG_MODEL}"]
    assert main(["all", "--models", f"{MODELS},{SEG_MODEL}", *common]) == 0
    out = capsys.readouterr().out
    for stage in ("demo-data", "prepare", "folds", "train", "segment", "evaluate", "stack", "submit", "report"):
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
    assert main(["all", "--models", f"{MODELS},{SEG_MODEL}", *common]) == 0
    out = capsys.readouterr().out
    assert "ichkit demo-data" not in out
    assert "0 prepared now" in out

    # the submission: valid, one row per test image and label, and the files the summary names exist
    from ichkit.outputs.submit import expected_row_ids, validate_rsna_submission

    ensemble = json.loads((work / "stack" / "ensemble.json").read_text())
    sidecar_path = next((tmp_path / "submissions").glob("*.json"))
    sidecar = json.loads(sidecar_path.read_text())
    rsna = pd.read_csv(sidecar["files"]["rsna"])
    test_ids = table.loc[table["split"] == "test", "image_id"].tolist()
    validate_rsna_submission(rsna, rsna["ID"].tolist())
    assert sorted(rsna["ID"]) == sorted(expected_row_ids(test_ids))
    assert sidecar["ensemble"]["winner"] == ensemble["winner"]
    assert (work / "report" / "report.html").is_file() and (work / "report" / "report.md").is_file()
    assert f'data-seg-model="{SEG_MODEL}"' in (work / "report" / "report.html").read_text()
    # the segmentation outputs: RLE for every test image, volumes per test study, a PNG per positive image
    rle = pd.read_csv(sidecar["files"]["mask_rle"], keep_default_na=False)
    assert sorted(rle["ImageId"]) == sorted(test_ids)
    pngs = sorted(p.stem for p in Path(sidecar["files"]["mask_pngs"]).glob("*.png"))
    assert pngs == sorted(rle.loc[rle["EncodedPixels"] != "", "ImageId"])
    volumes = pd.read_csv(sidecar["files"]["volumes"])
    assert set(volumes["study_id"]) == set(table.loc[table["split"] == "test", "study_id"])
    assert "report: " in out and "up to date" in out  # the re-run skipped the unchanged report
    assert f"submission {sidecar['run_id']}: done already" in out
    assert len(list((tmp_path / "submissions").glob("*.json"))) == 1  # same run id, no new files
    for path in sidecar["files"].values():
        assert str(path) in out  # the final summary names every file written

    # predict: the trained run applied to a bare folder of the test DICOMs (one renamed without suffix,
    # one broken) writes a valid submission equal to the competition one on the same images
    bare = tmp_path / "bare"
    bare.mkdir()
    sources = sorted((tmp_path / "input" / "demo" / "stage_2_test").glob("*.dcm"))[:6]
    for i, src in enumerate(sources):
        shutil.copy(src, bare / (src.stem if i == 0 else src.name))
    (bare / "ID_broken.dcm").write_bytes(b"not a dicom file")
    assert main(["predict", "--data", str(bare), "--models", str(work), "--out", str(tmp_path / "new"), *common]) == 0
    out = capsys.readouterr().out
    new_sidecar = json.loads(next((tmp_path / "new").glob("*.json")).read_text())
    new = pd.read_csv(new_sidecar["files"]["rsna"])
    ids = [s.stem for s in sources] + ["ID_broken"]
    validate_rsna_submission(new, expected_row_ids(ids))
    assert [f["image_id"] for f in new_sidecar["fallback"]["images"]] == ["ID_broken"]
    same = rsna.set_index("ID")["Label"].reindex(new["ID"]).dropna()
    assert len(same) == 6 * len(sources)
    assert (new.set_index("ID")["Label"].loc[same.index] - same).abs().max() < 1e-6
    assert "predict-bare" in new_sidecar["run_id"]
    new_rle = pd.read_csv(new_sidecar["files"]["mask_rle"], keep_default_na=False).set_index("ImageId")
    old_rle = rle.set_index("ImageId")["EncodedPixels"]
    assert (new_rle.loc[[s.stem for s in sources], "EncodedPixels"] == old_rle.loc[[s.stem for s in sources]]).all()


def test_all_trains_registered_models_by_family_and_names_the_rest(capsys):
    from ichkit.config import load_config
    from ichkit.pipeline import registered_models, training_stages

    cfg = load_config(None, [])
    models, skipped = registered_models("lgbm_radiomic, cnn_not_installed,logreg_pixels", cfg)
    assert models == ["lgbm_radiomic", "logreg_pixels"] and skipped == ["cnn_not_installed"]
    assert training_stages(models) == [["train", "--model", "lgbm_radiomic,logreg_pixels"]]
    assert training_stages(["hu_threshold_seg", "lgbm_radiomic"]) == [["train", "--model", "lgbm_radiomic"],
                                                                      ["segment", "--model", "hu_threshold_seg"]]
    every, _ = registered_models("all", cfg)
    assert every == list(cfg["train"]["models"]) + list(cfg["seg"]["models"])
    # "all" inside a list expands in place, without repeating a model named twice
    more, _ = registered_models("cnn_baseline,all,lgbm_radiomic", cfg)
    assert more == ["cnn_baseline"] + every
    # the classical segmenter is in the main run by default (masks, RLE, volumes); the U-Net is opt-in
    assert "hu_threshold_seg" in every and "resnet50_unet_seg" not in every
    assert cfg["seg"]["submit_model"] == "hu_threshold_seg"
