"""Fold assignment: no patient leaks across folds, classes reach every fold, determinism, file checks."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from ichkit import folds as folds_mod
from ichkit.config import load_config
from ichkit.folds import FoldsError, make_folds, read_folds
from ichkit.labels import CLASSES7
from ichkit.table import Dataset, conform, read_table, write_table

HEMORRHAGES = [c for c in CLASSES7 if c != "normal"]
# small random tables have classes too rare for every fold; the warning itself is tested below
pytestmark = pytest.mark.filterwarnings("ignore:class .* is absent from folds:UserWarning")


def random_table(seed: int, n_patients: int, max_slices: int = 60) -> pd.DataFrame:
    """A slice table like a CT series: patients with 1..max_slices slices, mostly normal, hemorrhage in runs.

    Class mixes are skewed per table (Dirichlet with small concentration), some patients carry two
    hemorrhage classes, and a few rows are test-split or quarantined (folds must ignore those).
    """
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet(np.full(len(HEMORRHAGES), 0.5))
    rows = []
    for p in range(n_patients):
        n = int(rng.integers(1, max_slices + 1))
        labels = np.full(n, "normal", dtype=object)
        if rng.random() < 0.5:
            for cls in rng.choice(HEMORRHAGES, size=int(rng.integers(1, 3)), p=mix, replace=False):
                start = int(rng.integers(0, n))
                labels[start:start + int(rng.integers(1, 12))] = cls
        for i, label in enumerate(labels):
            rows.append({"image_id": f"ID_{p:04d}{i:03d}{seed:04d}", "patient_id": f"PAT_{p:04d}", "label7": label,
                         "split": "train", "status": "ok"})
    table = pd.DataFrame(rows)
    # rows that must not be folded: test images (unlabelled) and quarantined training images
    extra = table.sample(n=max(1, len(table) // 20), random_state=seed).index
    table.loc[extra[: len(extra) // 2], ["split", "label7"]] = ["test", None]
    table.loc[extra[len(extra) // 2:], "status"] = "quarantined"
    return conform(table)


def ok_train(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["split"] == "train") & (table["status"] == "ok")]


# (table seed, patients, max slices per patient, k): small and large tables, thin and thick series
CASES = [(s, n, m, k) for s, (n, m, k) in enumerate(
    [(8, 40, 5), (12, 80, 3), (25, 30, 5), (30, 200, 5), (40, 20, 4), (60, 60, 5), (9, 10, 2), (100, 40, 10),
     (15, 120, 3), (50, 50, 5), (35, 25, 5), (70, 80, 4), (20, 60, 5), (45, 30, 3), (33, 90, 5), (80, 15, 5)])]


@pytest.mark.parametrize("seed,n_patients,max_slices,k", CASES)
def test_no_patient_in_two_folds_and_every_ok_train_image_once(seed, n_patients, max_slices, k):
    table = random_table(seed, n_patients, max_slices)
    result = make_folds(table, k=k, seed=seed)
    assert list(result.columns) == ["image_id", "patient_id", "fold"]
    assert result["image_id"].is_unique
    assert set(result["image_id"]) == set(ok_train(table)["image_id"])
    assert (result.groupby("patient_id")["fold"].nunique() == 1).all()
    assert sorted(result["fold"].unique()) == list(range(k))
    # patient ids carried over unchanged from the table
    expected = ok_train(table).set_index("image_id")["patient_id"].astype(str)
    assert (result.set_index("image_id")["patient_id"] == expected.loc[result["image_id"]]).all()


def uncovered(table: pd.DataFrame, fold_of_image: pd.Series, k: int) -> dict[str, list[int]]:
    """Classes carried by >= k patients that are missing from some fold, with those folds."""
    train = ok_train(table).assign(fold=lambda d: d["image_id"].map(fold_of_image))
    gaps = {}
    for cls, group in train.groupby("label7"):
        if group["patient_id"].nunique() >= k:
            missing = sorted(set(range(k)) - set(group["fold"]))
            if missing:
                gaps[cls] = missing
    return gaps


@pytest.mark.parametrize("seed,n_patients,max_slices,k", CASES)
def test_every_class_in_every_fold_when_at_least_k_patients_carry_it(seed, n_patients, max_slices, k):
    table = random_table(seed, n_patients, max_slices)
    result = make_folds(table, k=k, seed=seed)
    assert uncovered(table, result.set_index("image_id")["fold"], k) == {}


def test_repair_fills_the_gaps_stratified_group_kfold_leaves():
    """StratifiedGroupKFold alone sometimes leaves a class out of a fold; make_folds must not."""
    repaired = 0
    for seed in range(200):
        k = 5
        table = random_table(1000 + seed, n_patients=30, max_slices=40)
        train = ok_train(table).sort_values("image_id")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sklearn: class with fewer slices than k
            splits = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(
                train, train["label7"].astype(str), train["patient_id"].astype(str)))
        plain = pd.Series(-1, index=train["image_id"].astype(str))
        for f, (_, held_out) in enumerate(splits):
            plain.iloc[held_out] = f
        if not uncovered(table, plain, k):
            continue
        result = make_folds(table, k=k, seed=seed)
        assert uncovered(table, result.set_index("image_id")["fold"], k) == {}
        # the repair moves a few patients, it does not re-deal the folds
        per_patient = result.assign(plain=result["image_id"].map(plain)).groupby("patient_id")[["fold", "plain"]].first()
        assert (per_patient["fold"] != per_patient["plain"]).sum() <= 6
        repaired += 1
        if repaired == 3:
            break
    assert repaired == 3, "expected some tables where StratifiedGroupKFold alone leaves a class out of a fold"


def test_impossible_layout_warns_which_class_and_fold():
    # k=2 and three classes each in exactly two patients, pairwise shared (a triangle): no 2-fold split
    # puts every class in both folds, so make_folds must say so instead of failing silently.
    carried = {"PAT_A": ["epidural", "subdural"], "PAT_B": ["subdural", "subarachnoid"],
               "PAT_C": ["epidural", "subarachnoid"], "PAT_D": [], "PAT_E": [], "PAT_F": []}
    rows = []
    for patient, classes in carried.items():
        for i, label in enumerate(classes + ["normal"] * 4):
            rows.append({"image_id": f"ID_{patient[-1]}{i}", "patient_id": patient, "label7": label,
                         "split": "train", "status": "ok"})
    with pytest.warns(UserWarning, match=r"class (epidural|subdural|subarachnoid) is absent from folds \[\d\]"):
        result = make_folds(conform(pd.DataFrame(rows)), k=2, seed=0)
    assert (result.groupby("patient_id")["fold"].nunique() == 1).all()


def test_rare_class_warning_names_patient_count():
    table = random_table(3, 40, 30)
    train = ok_train(table)
    # make epidural exist in exactly one patient
    table.loc[table["label7"] == "epidural", "label7"] = "normal"
    first = train.index[0]
    table.loc[first, "label7"] = "epidural"
    with pytest.warns(UserWarning, match=r"class epidural is absent from folds \[.*\]: carried by only 1 patient"):
        make_folds(table, k=4, seed=1)


def test_deterministic_for_a_seed_and_independent_of_row_order():
    table = random_table(7, 60, 40)
    first = make_folds(table, k=5, seed=11)
    again = make_folds(table, k=5, seed=11)
    shuffled = make_folds(table.sample(frac=1.0, random_state=3).reset_index(drop=True), k=5, seed=11)
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, shuffled)
    other = make_folds(table, k=5, seed=12)
    assert not first["fold"].equals(other["fold"])


def test_folds_are_balanced_on_a_large_table():
    table = random_table(21, 300, 50)
    result = make_folds(table, k=5, seed=0)
    sizes = result["fold"].value_counts()
    assert sizes.max() <= 1.25 * len(result) / 5 and sizes.min() >= 0.75 * len(result) / 5


def test_clear_errors_for_unusable_tables():
    table = random_table(5, 6, 10)
    with pytest.raises(FoldsError, match=r"only 6 patients in the training split, fewer than k=7"):
        make_folds(table, k=7, seed=0)
    no_patient = table.copy()
    no_patient.loc[ok_train(table).index[:3], "patient_id"] = ""
    with pytest.raises(FoldsError, match=r"3 of \d+ training images have no patient_id \(e\.g\. ID_"):
        make_folds(no_patient, k=3, seed=0)
    no_label = table.copy()
    no_label.loc[ok_train(table).index[0], "label7"] = pd.NA
    with pytest.raises(FoldsError, match=r"1 training images have no valid label7"):
        make_folds(no_label, k=3, seed=0)
    with pytest.raises(FoldsError, match=r"no training images with status ok"):
        make_folds(table.assign(status="pending"), k=3, seed=0)


def test_read_folds_round_trip_and_rejects_leaked_stale_and_broken_files(tmp_path):
    table = random_table(9, 30, 20)
    result = make_folds(table, k=3, seed=0)
    path = tmp_path / "folds.csv"
    folds_mod.write_folds(result, path, {"k": 3})
    back = read_folds(path, table)
    pd.testing.assert_frame_equal(back, result.reset_index(drop=True), check_dtype=False)
    assert back["fold"].dtype == np.int64

    with pytest.raises(FoldsError, match=r"not found: run `ichkit folds`"):
        read_folds(tmp_path / "nope.csv")

    leaked = result.copy()
    patient = leaked["patient_id"].iloc[0]
    rows = leaked.index[leaked["patient_id"] == patient]
    assert len(rows) >= 2
    leaked.loc[rows[0], "fold"] = (leaked.loc[rows[0], "fold"] + 1) % 3
    leaked.to_csv(path, index=False)
    with pytest.raises(FoldsError, match=rf"1 patients have slices in more than one fold \(e\.g\. {patient}"):
        read_folds(path)

    result.to_csv(path, index=False)
    grown = pd.concat([table, conform(pd.DataFrame([{"image_id": "ID_new", "patient_id": "PAT_new",
                                                     "label7": "normal", "split": "train", "status": "ok"}]))])
    with pytest.raises(FoldsError, match=r"folds.csv is stale: 1 ok training images of the table are not in it \(e\.g\. ID_new\)"):
        read_folds(path, grown)
    shrunk = table[table["image_id"] != result["image_id"].iloc[0]]
    with pytest.raises(FoldsError, match=r"folds.csv is stale: 1 of its images are not ok training images"):
        read_folds(path, shrunk)

    pd.concat([result, result.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(FoldsError, match=r"1 images have more than one row"):
        read_folds(path)
    result.drop(columns="patient_id").to_csv(path, index=False)
    with pytest.raises(FoldsError, match=r"missing columns \['patient_id'\]"):
        read_folds(path)
    result.assign(fold=result["fold"] + 1).to_csv(path, index=False)
    with pytest.raises(FoldsError, match=r"not numbered 0..k-1"):
        read_folds(path)


def test_stage_writes_csv_sidecar_and_prints_counts(tmp_path, capsys):
    table = random_table(13, 40, 30)
    work = tmp_path / "work"
    write_table(Dataset(root=tmp_path / "data", layout="rsna", slices=table), work)
    out = tmp_path / "folds" / "folds.csv"
    cfg = load_config(overrides=[f"paths.work={work}", f"paths.folds={out}", "folds.k=4"])
    parser = argparse.ArgumentParser()
    folds_mod.add_arguments(parser)

    assert folds_mod.run(parser.parse_args(["--seed", "5"]), cfg) == 0

    written = read_folds(out, read_table(work).slices)
    assert written["fold"].nunique() == 4
    pd.testing.assert_frame_equal(written, make_folds(table, k=4, seed=5), check_dtype=False)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["k"], meta["seed"], meta["n_images"]) == (4, 5, len(written))
    assert meta["n_patients"] == written["patient_id"].nunique()
    assert meta["table_root"] == str((tmp_path / "data").resolve())
    labels = ok_train(table).set_index("image_id")["label7"]
    for f, part in written.groupby("fold"):
        counted = meta["per_fold"][str(f)]
        assert counted["images"] == len(part)
        assert counted["classes"] == {c: int((labels.loc[part["image_id"]] == c).sum()) for c in CLASSES7}
    printed = capsys.readouterr().out
    assert f"{len(written)} images of {meta['n_patients']} patients in 4 folds (seed 5)" in printed
    assert "total" in printed and "subdural" in printed

    # a --k larger than the patient count is an error message and exit code (cli.main), not a traceback
    from ichkit.cli import main

    assert main(["folds", "--k", "99", "--set", f"paths.work={work}", "--set", f"paths.folds={out}"]) == 1
    err = capsys.readouterr().err
    assert "ichkit folds: error:" in err and "fewer than k=99" in err
