"""The OOF contract: schema checks, per-fold files, merging with coverage checks, scoring by image id."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichkit import oof
from ichkit.heads import rsna_from_class7
from ichkit.labels import CLASS7_INDEX, CLASSES7, RSNA_LABELS, SUBTYPES, seven_class_column
from ichkit.metrics import score_predictions
from ichkit.oof import OOF_COLUMNS, PROB_COLUMNS, RSNA_COLUMNS, OOFError

K = 3
TEST_IDS = [f"ID_test{i}" for i in range(4)]


def fold_table(n_images: int = 12, k: int = K) -> pd.DataFrame:
    """folds.csv content: images of 2 patients per fold."""
    ids = [f"ID_{i:03d}" for i in range(n_images)]
    fold = [i % k for i in range(n_images)]
    return pd.DataFrame({"image_id": ids, "patient_id": [f"P{i % (2 * k)}" for i in range(n_images)], "fold": fold})


def random_p7(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.dirichlet(np.ones(len(CLASSES7)), size=n)


def part(image_ids, fold: int, p7: np.ndarray) -> pd.DataFrame:
    return oof.predictions_frame(image_ids, fold, p7, rsna_from_class7(p7, np.full(5, 0.5)))


def write_all_folds(work, model: str, folds: pd.DataFrame, seed: int = 0, skip: tuple[int, ...] = ()) -> list[pd.DataFrame]:
    """Write every fold's parts; return the test parts written (for checking the mean)."""
    rng = np.random.default_rng(seed)
    tests = []
    for f in sorted(folds["fold"].unique()):
        held_out = folds.loc[folds["fold"] == f, "image_id"]
        test = part(TEST_IDS, f, random_p7(rng, len(TEST_IDS)))
        tests.append(test)
        if f not in skip:
            oof.write_fold(work, model, f, part(held_out, f, random_p7(rng, len(held_out))), test)
    return tests


# --- schema ----------------------------------------------------------------------------------------------
def good_frame(fold: int = 0) -> pd.DataFrame:
    return part(["ID_a", "ID_b", "ID_c"], fold, random_p7(np.random.default_rng(5), 3))


@pytest.mark.parametrize("breakage,message", [
    (lambda f: f.drop(columns="prob_multi"), r"missing columns \['prob_multi'\]"),
    (lambda f: f.assign(logit=0.0), r"unexpected columns \['logit'\]"),
    (lambda f: f.assign(rsna_any=[0.5, np.nan, 0.5]), r"NaN predictions \(rsna_any: 1 rows\)"),
    (lambda f: f.assign(rsna_subdural=[0.5, 1.2, 0.5]), r"rsna_subdural = 1.2 for ID_b is outside \[0, 1\]"),
    (lambda f: f.assign(prob_normal=f["prob_normal"] + 0.01), r"the 7 prob_ columns of ID_a sum to 1\.010000, not 1"),
    (lambda f: f.assign(fold=[0, 1, 0]), r"rows carry fold \[1\], expected 0"),
    (lambda f: f.assign(image_id=["ID_a", "ID_a", "ID_c"]), r"image ID_a appears more than once"),
    (lambda f: f.assign(image_id=["ID_a", None, "ID_c"]), r"1 rows have no image_id"),
    (lambda f: f.assign(prob_epidural="high"), r"columns \['prob_epidural'\] are not numeric"),
])
def test_write_fold_rejects_frames_that_break_the_contract(tmp_path, breakage, message):
    with pytest.raises(OOFError, match=r"OOF part of model m fold 0: " + message):
        oof.write_fold(tmp_path, "m", 0, breakage(good_frame()), good_frame())
    assert not oof.fold_done(tmp_path, "m", 0)
    assert not (tmp_path / "oof").exists()


def test_probabilities_summing_to_one_within_tolerance_pass(tmp_path):
    frame = good_frame()
    frame["prob_normal"] += 5e-5  # float32 softmax noise is well inside 1e-4
    oof.write_fold(tmp_path, "m", 0, frame, good_frame())
    assert oof.fold_done(tmp_path, "m", 0)


def test_write_fold_paths_and_round_trip(tmp_path):
    oof_path, test_path = oof.fold_part_paths(tmp_path, "lgbm", 2)
    assert oof_path == tmp_path / "oof" / "lgbm" / "fold2.parquet"
    assert test_path == tmp_path / "test" / "lgbm" / "fold2.parquet"
    assert not oof.fold_done(tmp_path, "lgbm", 2)
    held_out, test = good_frame(2), part(TEST_IDS, 2, random_p7(np.random.default_rng(1), 4))
    oof.write_fold(tmp_path, "lgbm", 2, held_out, test)
    assert oof.fold_done(tmp_path, "lgbm", 2)
    back = pd.read_parquet(oof_path)
    assert list(back.columns) == list(OOF_COLUMNS)
    np.testing.assert_allclose(back[list(PROB_COLUMNS)].to_numpy(), held_out[list(PROB_COLUMNS)].to_numpy())
    assert list(pd.read_parquet(test_path)["image_id"]) == TEST_IDS
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(OOFError, match="model name 'a/b'"):
        oof.fold_part_paths(tmp_path, "a/b", 0)


# --- merge -----------------------------------------------------------------------------------------------
def test_merge_covers_every_training_image_once_and_averages_test_parts(tmp_path):
    folds = fold_table()
    tests = write_all_folds(tmp_path, "lgbm", folds)
    merged_oof, merged_test = oof.merge(tmp_path, "lgbm", folds)

    assert list(merged_oof["image_id"]) == list(folds["image_id"])  # folds.csv order, each once
    assert (merged_oof["fold"].to_numpy() == folds["fold"].to_numpy()).all()
    # each OOF row is the prediction of the part of its own fold
    for f in range(K):
        written = pd.read_parquet(oof.fold_part_paths(tmp_path, "lgbm", f)[0]).set_index("image_id")
        mine = merged_oof[merged_oof["fold"] == f].set_index("image_id")
        pd.testing.assert_frame_equal(mine, written.loc[mine.index], check_dtype=False)

    stacked = np.stack([t.set_index("image_id").loc[TEST_IDS, list(PROB_COLUMNS + RSNA_COLUMNS)].to_numpy() for t in tests])
    assert list(merged_test["image_id"]) == sorted(TEST_IDS)
    np.testing.assert_allclose(merged_test[list(PROB_COLUMNS + RSNA_COLUMNS)].to_numpy(), stacked.mean(axis=0))
    assert (merged_test["fold"] == -1).all()

    pd.testing.assert_frame_equal(oof.read_oof(tmp_path, "lgbm"), merged_oof, check_dtype=False)
    pd.testing.assert_frame_equal(oof.read_test(tmp_path, "lgbm"), merged_test, check_dtype=False)
    note = (tmp_path / "test" / "lgbm.json").read_text()
    assert '"folds": [\n    0,\n    1,\n    2\n  ]' in note
    assert oof.list_models(tmp_path) == ["lgbm"]


def test_merge_test_mean_of_hand_made_parts(tmp_path):
    folds = fold_table(6, k=2)
    for f, p_normal in ((0, 0.2), (1, 0.6)):
        p7 = np.zeros((1, 7))
        p7[0, CLASS7_INDEX["normal"]], p7[0, CLASS7_INDEX["subdural"]] = p_normal, 1 - p_normal
        held_out = folds.loc[folds["fold"] == f, "image_id"]
        oof.write_fold(tmp_path, "m", f, part(held_out, f, np.tile(p7, (len(held_out), 1))), part(["ID_t"], f, p7))
    _, test = oof.merge(tmp_path, "m", folds)
    # (0.2 + 0.6) / 2 = 0.4 normal, (0.8 + 0.4) / 2 = 0.6 subdural; any = 1 - 0.4 = 0.6
    assert test["prob_normal"].iloc[0] == pytest.approx(0.4)
    assert test["prob_subdural"].iloc[0] == pytest.approx(0.6)
    assert test["rsna_any"].iloc[0] == pytest.approx(0.6)


def test_merge_names_the_missing_folds(tmp_path):
    folds = fold_table()
    write_all_folds(tmp_path, "cnn", folds, skip=(1,))
    (tmp_path / "test" / "cnn" / "fold2.parquet").unlink()
    with pytest.raises(OOFError, match=r"model cnn: parts of folds \[1, 2\] \(of \[0, 1, 2\]\) are missing") as info:
        oof.merge(tmp_path, "cnn", folds)
    assert "oof/cnn/fold1.parquet" in str(info.value) and "test/cnn/fold2.parquet" in str(info.value)
    assert "oof/cnn/fold2.parquet" not in str(info.value)  # present: not reported
    assert oof.list_models(tmp_path) == []


def test_merge_rejects_an_image_predicted_twice(tmp_path):
    folds = fold_table()
    write_all_folds(tmp_path, "m", folds)
    stray = folds.loc[folds["fold"] == 1, "image_id"].iloc[0]
    held_out = list(folds.loc[folds["fold"] == 0, "image_id"]) + [stray]
    test = pd.read_parquet(oof.fold_part_paths(tmp_path, "m", 0)[1])
    oof.write_fold(tmp_path, "m", 0, part(held_out, 0, random_p7(np.random.default_rng(2), len(held_out))), test)
    with pytest.raises(OOFError, match=rf"1 images are predicted in more than one OOF part \(e\.g\. {stray} in folds \[0, 1\]\)"):
        oof.merge(tmp_path, "m", folds)


def test_merge_rejects_missing_unknown_and_misplaced_images(tmp_path):
    folds = fold_table()
    write_all_folds(tmp_path, "m", folds)
    more = pd.concat([folds, pd.DataFrame({"image_id": ["ID_999"], "patient_id": ["P9"], "fold": [2]})])
    with pytest.raises(OOFError, match=r"1 training images of folds.csv have no OOF prediction \(e\.g\. ID_999\)"):
        oof.merge(tmp_path, "m", more)
    fewer = folds[folds["image_id"] != "ID_000"]
    with pytest.raises(OOFError, match=r"1 OOF rows are not training images of folds.csv \(e\.g\. ID_000\)"):
        oof.merge(tmp_path, "m", fewer)
    moved = folds.copy()
    moved.loc[moved["image_id"] == "ID_000", "fold"] = 1
    with pytest.raises(OOFError, match=r"1 images sit in a different fold than folds.csv says \(e\.g\. ID_000 in part 0, folds.csv: 1\)"):
        oof.merge(tmp_path, "m", moved)


def test_merge_rejects_test_parts_over_different_images(tmp_path):
    folds = fold_table()
    write_all_folds(tmp_path, "m", folds)
    held_out = pd.read_parquet(oof.fold_part_paths(tmp_path, "m", 2)[0])
    oof.write_fold(tmp_path, "m", 2, held_out, part(TEST_IDS[:3], 2, random_p7(np.random.default_rng(3), 3)))
    with pytest.raises(OOFError, match=r"test part of fold 2 predicts 3 images, fold 0 4; they differ \(e\.g\. ID_test3\)"):
        oof.merge(tmp_path, "m", folds)


def test_merge_revalidates_parts_copied_in_by_hand(tmp_path):
    folds = fold_table()
    write_all_folds(tmp_path, "m", folds)
    path = oof.fold_part_paths(tmp_path, "m", 1)[0]
    broken = pd.read_parquet(path)
    broken.loc[0, "rsna_any"] = np.nan
    broken.to_parquet(path, index=False)
    with pytest.raises(OOFError, match=r"fold1.parquet: NaN predictions \(rsna_any: 1 rows\)"):
        oof.merge(tmp_path, "m", folds)
    path.write_bytes(b"not parquet")
    with pytest.raises(OOFError, match=r"fold1.parquet: cannot read an OOF part"):
        oof.merge(tmp_path, "m", folds)


def test_read_oof_of_an_untrained_model_says_what_to_do(tmp_path):
    with pytest.raises(OOFError, match=r"oof/nothing.parquet not found: train model nothing on every fold"):
        oof.read_oof(tmp_path, "nothing")
    assert oof.list_models(tmp_path) == []


def labels_frame(rows: list[tuple[int, ...]]) -> pd.DataFrame:
    """Rows of (epidural, iph, ivh, sah, sdh) flags -> RSNA label frame with `any`."""
    frame = pd.DataFrame(rows, columns=list(SUBTYPES))
    frame.insert(0, "any", (frame.sum(axis=1) > 0).astype(int))
    return frame


def test_score_oof_aligns_labels_by_image_id():
    rng = np.random.default_rng(4)
    labels = labels_frame([tuple(int(v) for v in row) for row in (rng.random((40, 5)) < 0.15)])
    table = labels.assign(image_id=[f"ID_{i:03d}" for i in range(40)], label7=seven_class_column(labels))
    p7 = random_p7(rng, 40)
    frame = oof.predictions_frame(table["image_id"], 0, p7, rsna_from_class7(p7, np.full(5, 0.4)))
    expected = score_predictions(table["label7"].map(CLASS7_INDEX).to_numpy(), p7,
                                 table[list(RSNA_LABELS)].to_numpy(), frame[list(RSNA_COLUMNS)].to_numpy())
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert oof.score_oof(shuffled, table.sample(frac=1.0, random_state=1)) == pytest.approx(expected, nan_ok=True)
    stray = pd.concat([frame, oof.predictions_frame(["ID_zzz"], 0, p7[:1], frame[list(RSNA_COLUMNS)].to_numpy()[:1])])
    with pytest.raises(OOFError, match=r"1 predicted images have no labels in the table \(e\.g\. ID_zzz\)"):
        oof.score_oof(stray, table)
