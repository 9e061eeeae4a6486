"""The stacker: slice-context features, patient-grouped fitting (planted-leak test), the choice of the winner.

`make_work` writes a small synthetic work folder (table, folds, first-level OOF and test files) in the
real file formats; tests/test_submit.py and tests/test_report.py reuse it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichkit import oof
from ichkit.config import load_config
from ichkit.folds import make_folds, write_folds
from ichkit.heads import rsna_from_class7
from ichkit.labels import CLASSES7, RSNA_LABELS, SUBTYPES, seven_class_column
from ichkit.table import Dataset, write_table

BLEEDS = [c for c in CLASSES7 if c not in ("normal", "multi")]


def make_table(n_patients: int, slices_per: int, n_test_patients: int, seed: int = 0) -> pd.DataFrame:
    """One series per patient, shuffled row order, z descending for odd patients; a bleed of the patient's
    subtype spans consecutive slices in the middle of the series."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients + n_test_patients):
        subtype = BLEEDS[p % len(BLEEDS)] if p % 4 != 3 else None  # every 4th patient has no bleed
        start = rng.integers(2, slices_per - 5)
        for s in range(slices_per):
            bleed = subtype is not None and start <= s < start + 4
            labels = {lab: int(bleed and (lab == "any" or lab == subtype)) for lab in RSNA_LABELS}
            rows.append({"image_id": f"ID_{p:03d}{s:03d}ab", "patient_id": f"P{p}", "study_id": f"S{p}",
                         "series_id": f"SE{p}", "z": float(s * 5 if p % 2 == 0 else -s * 5),
                         "instance_number": s + 1, "split": "train" if p < n_patients else "test",
                         "source": "dicom", "path": f"x/{p}_{s}.dcm", "status": "ok", **labels})
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    table["label7"] = seven_class_column(table)
    test = table["split"] == "test"
    table.loc[test, list(RSNA_LABELS)] = pd.NA
    table["label7"] = table["label7"].astype("string").where(~test, pd.NA)
    return table


def first_level(table: pd.DataFrame, rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """A model that sees `any` well but confuses the subtypes (noise mixes in random distributions)."""
    n = len(table)
    truth = table["label7"].fillna("normal").map({c: j for j, c in enumerate(CLASSES7)}).to_numpy()
    any_ = (truth != CLASSES7.index("normal")).astype(float)
    p7 = np.zeros((n, 7))
    p7[:, CLASSES7.index("normal")] = 1 - any_
    p7[:, : len(BLEEDS)] += any_[:, None] / len(BLEEDS)  # which subtype: no idea
    p7 = (1 - noise) * p7 + noise * rng.dirichlet(np.ones(7), size=n)
    share = np.full(len(SUBTYPES), 0.4)
    return p7, rsna_from_class7(p7, share)


def write_model(work: Path, name: str, table: pd.DataFrame, folds: pd.DataFrame, p7: np.ndarray, p6: np.ndarray,
                folds_file: Path) -> None:
    """A first-level model's fold parts and merged files, as the driver writes them."""
    from ichkit.engine.fingerprint import file_digest

    ids = table["image_id"].astype(str).to_numpy()
    test = (table["split"] == "test").to_numpy()
    fold_of = folds.set_index("image_id")["fold"]
    for k in sorted(folds["fold"].unique()):
        held = np.array([fold_of.get(i, -1) == k for i in ids])
        oof.write_fold(work, name, k, oof.predictions_frame(ids[held], k, p7[held], p6[held]),
                       oof.predictions_frame(ids[test], k, p7[test], p6[test]))
    oof.merge(work, name, folds, meta={"task": "7class", "folds_digest": file_digest(folds_file)})


def make_work(tmp_path: Path, n_patients: int = 24, slices_per: int = 12, models: int = 2, k: int = 3,
              quarantine_test: int = 0) -> dict:
    """A work folder with a table, folds and `models` first-level models; returns cfg, table, folds."""
    work = tmp_path / "work"
    table = make_table(n_patients, slices_per, n_test_patients=4)
    if quarantine_test:
        bad = table.index[table["split"] == "test"][:quarantine_test]
        table.loc[bad, "status"] = "quarantined"
        (work / "cache").mkdir(parents=True)
        pd.DataFrame({"image_id": table.loc[bad, "image_id"], "path": table.loc[bad, "path"],
                      "reason": "truncated", "detail": "cut"}).to_csv(work / "cache" / "quarantine.csv", index=False)
    write_table(Dataset(root=tmp_path, layout="rsna", slices=table), work)
    folds_file = tmp_path / "folds" / "folds.csv"
    folds = make_folds(table, k=k, seed=1)
    write_folds(folds, folds_file, {"k": k})
    rng = np.random.default_rng(7)
    ok = (table["status"] == "ok").to_numpy()
    for m in range(models):
        p7, p6 = first_level(table, rng, noise=0.3 + 0.1 * m)
        write_model(work, f"model{m}", table[ok], folds, p7[ok], p6[ok], folds_file)
    overrides = [f"paths.work={work}", f"paths.folds={folds_file}", f"paths.submissions={tmp_path / 'submissions'}"]
    return {"cfg": load_config(None, overrides), "overrides": overrides, "work": work, "table": table,
            "folds": folds, "folds_file": folds_file, "root": tmp_path}


# ------------------------------------------------------------------------------------------------ context
def test_context_features_follow_z_within_each_series_not_the_row_order():
    from ichkit.models.stack import SEP, context_features

    slices = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"], "series_id": ["s", "s", "s", "t", "s"],
                           "z": [10.0, -5.0, 0.0, 1.0, 5.0], "instance_number": [1, 2, 3, 1, 4]})
    values = pd.DataFrame({"v": [4.0, 1.0, 2.0, 9.0, 3.0]}, index=pd.Index(list("abcde"), name="image_id"))
    ctx = context_features(values, slices, offsets=[1, 2])
    # series s sorted by z: b(-5) c(0) e(5) a(10) -> values 1 2 3 4
    assert ctx.loc["c", f"v{SEP}prev1"] == 1.0 and ctx.loc["c", f"v{SEP}next1"] == 3.0
    assert ctx.loc["c", f"v{SEP}next2"] == 4.0 and np.isnan(ctx.loc["c", f"v{SEP}prev2"])
    assert np.isnan(ctx.loc["a", f"v{SEP}next1"]) and ctx.loc["a", f"v{SEP}prev2"] == 2.0
    assert ctx.loc["b", f"v{SEP}series_max"] == 4.0 and ctx.loc["b", f"v{SEP}series_mean"] == 2.5
    # d is alone in its series: no neighbours, its own max
    assert np.isnan(ctx.loc["d", f"v{SEP}prev1"]) and ctx.loc["d", f"v{SEP}series_max"] == 9.0
    assert list(ctx.index) == list("abcde")


# ---------------------------------------------------------------------------------------- stage + winner
def test_stack_stage_writes_contract_oof_and_picks_the_best_candidate(tmp_path):
    from ichkit.outputs.ensemble import read_ensemble, run_stack

    w = make_work(tmp_path)
    ens = run_stack(w["cfg"], progress=False)
    stack_oof = oof.read_oof(w["work"], "stack_lgbm")
    assert sorted(stack_oof["image_id"]) == sorted(w["folds"]["image_id"])
    assert len(oof.read_test(w["work"], "stack_lgbm")) == int((w["table"]["split"] == "test").sum())
    scores = {c: s["rsna_logloss"] for c, s in ens["candidates"].items()}
    assert set(scores) == {"single", "mean", "stack"}
    assert ens["winner"] == min(scores, key=scores.get)
    # the context features know the bleed spans consecutive slices: the stacker beats its inputs here
    assert scores["stack"] < scores["single"]
    assert ens["gain"]["stack_vs_single"] == pytest.approx(scores["single"] - scores["stack"])
    assert read_ensemble(w["work"])["winner"] == ens["winner"]


def test_stacker_is_not_used_when_a_single_model_wins():
    from ichkit.outputs.ensemble import candidate_scores

    table = make_table(12, 10, 0)
    ids = table["image_id"].astype(str)
    y = table["label7"].map({c: j for j, c in enumerate(CLASSES7)}).to_numpy()
    perfect7 = np.eye(7)[y] * 0.98 + 0.02 / 7
    perfect = oof.predictions_frame(ids, 0, perfect7, table[list(RSNA_LABELS)].to_numpy(float) * 0.98 + 0.01)
    rng = np.random.default_rng(0)
    noisy7, noisy6 = first_level(table, rng, noise=0.6)
    noisy = oof.predictions_frame(ids, 0, noisy7, noisy6)
    result = candidate_scores({"perfect": perfect, "noisy": noisy}, noisy, table, "rsna_logloss")
    assert result["winner"] == "single" and result["best_single"] == "perfect"
    assert result["gain"]["stack_vs_single"] < 0


# ---------------------------------------------------------------------------------------------- the leak
def _stack_logloss(w: dict, models: list[str], fold_of: pd.Series) -> float:
    """Stacker OOF RSNA log loss with the fold assignment `fold_of` (image id -> fold)."""
    from ichkit.engine.trainer import FoldContext
    from ichkit.metrics import rsna_log_loss
    from ichkit.models import get_model_spec
    from ichkit.models.stack import StackFeatures, StackTrainer

    cfg, work, table = w["cfg"], w["work"], w["table"]
    feats = StackFeatures.build(work, models, table, cfg["stack"]["neighbours"])
    spec = get_model_spec("stack_lgbm")
    y7, y6 = oof.truth_for(w["folds"], table)
    labels = pd.DataFrame({"y7": y7}, index=w["folds"]["image_id"].astype(str))
    labels[list(RSNA_LABELS)] = y6
    parts = []
    for k in sorted(fold_of.unique()):
        train_ids = fold_of.index[fold_of != k].tolist()
        ctx = FoldContext(cfg=cfg, work=work, model="stack_lgbm", fold=int(k), seed=int(cfg["train"]["seed"]), task="7class",
                          slices=table, labels=labels.loc[train_ids])
        t = StackTrainer(spec, spec.params(), ctx, feats)
        t.fit(train_ids, [], work / "tmp", resume=False)
        parts.append(t.predict(fold_of.index[fold_of == k].tolist()))
    pred = pd.concat(parts).set_index("image_id").loc[labels.index]
    return rsna_log_loss(labels[list(RSNA_LABELS)].to_numpy(), pred[list(oof.RSNA_COLUMNS)].to_numpy())


def test_planted_patient_leak_is_not_rewarded_by_the_grouped_folds(tmp_path):
    """A first-level 'model' whose output is a random code per patient carries no information about a new
    patient, but identifies each training patient (and so its bleed type). Under the patient-grouped folds
    the stacker cannot use it; fitted with slices of one patient on both sides (image-level folds) the same
    stacker exploits it (so do the series max/mean features, which fingerprint a patient too), which shows
    the test can see a leak."""
    from ichkit.outputs.ensemble import run_stack

    w = make_work(tmp_path, n_patients=48, models=1)
    table, folds, work = w["table"], w["folds"], w["work"]
    rng = np.random.default_rng(3)
    codes = {p: rng.dirichlet(np.ones(7)) for p in table["patient_id"].unique()}
    p7 = np.stack([codes[p] for p in table["patient_id"]])
    write_model(work, "leak", table, folds, p7, rsna_from_class7(p7, np.full(5, 0.4)), w["folds_file"])

    grouped = folds.set_index(folds["image_id"].astype(str))["fold"]
    honest = _stack_logloss(w, ["model0"], grouped)
    with_leak = _stack_logloss(w, ["model0", "leak"], grouped)
    by_image = pd.Series(np.random.default_rng(0).integers(0, 3, len(grouped)), index=grouped.index)
    leaky_split = _stack_logloss(w, ["model0", "leak"], by_image)
    assert with_leak > honest - 0.01, (honest, with_leak)   # grouped: the code buys nothing
    assert leaky_split < 0.8 * honest, (honest, leaky_split)  # image-level folds: it buys a lot (>20%)

    # the stage itself uses the grouped folds: its OOF score with the leak is the honest one
    ens = run_stack(w["cfg"], ["model0", "leak"], progress=False)
    assert ens["candidates"]["stack"]["rsna_logloss"] == pytest.approx(with_leak, abs=1e-9)


def test_optuna_tunes_the_stacker_and_stack_then_uses_the_tuned_params(tmp_path, capsys):
    import json

    from ichkit.cli import main
    from ichkit.outputs.ensemble import read_ensemble

    w = make_work(tmp_path, n_patients=12)
    sets = [a for o in w["overrides"] for a in ("--set", o)]
    assert main(["stack", "--trials", "1", *sets]) == 0
    saved = json.loads((w["work"] / "params" / "stack_lgbm.json").read_text())
    assert saved["model"] == "stack_lgbm" and saved["n_trials"] == 1 and np.isfinite(saved["rsna_logloss"])
    ens = read_ensemble(w["work"])
    assert "tuned" in ens["stack_source"]
    for key, value in saved["params"].items():
        assert ens["stack_params"][key] == value
