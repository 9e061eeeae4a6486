"""Competition files: the RSNA validator's messages, sample-submission order, the quarantine fallback, sidecar."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_stack import make_work

from ichkit.labels import CLASSES7, RSNA_LABELS
from ichkit.outputs.submit import SubmissionError, expected_row_ids, validate_rsna_submission

IDS = ["ID_aaa", "ID_bbb"]


def _sub(rows: list[str], labels=None) -> pd.DataFrame:
    return pd.DataFrame({"ID": rows, "Label": labels if labels is not None else [0.5] * len(rows)})


def test_validator_accepts_a_complete_submission():
    validate_rsna_submission(_sub(expected_row_ids(IDS)), expected_row_ids(IDS))


@pytest.mark.parametrize("change, message", [
    (lambda s: s.iloc[1:], r"1 of 12 expected ids are missing \(e.g. ID_aaa_any\)"),
    (lambda s: pd.concat([s, s.iloc[[3]]]), r"1 ids appear more than once \(e.g. ID_aaa_intraventricular\)"),
    (lambda s: s.assign(Label=[0.5] * 11 + [1.5]), r"1 labels are outside \[0, 1\] \(e.g. ID_bbb_subdural = 1.5\)"),
    (lambda s: s.assign(Label=[-0.1] + [0.5] * 11), r"outside \[0, 1\] \(e.g. ID_aaa_any = -0.1\)"),
    (lambda s: s.assign(Label=[np.nan] + [0.5] * 11), r"1 labels are NaN or not numbers \(e.g. ID_aaa_any\)"),
    (lambda s: pd.concat([s, _sub(["ID_zzz_any"])]), r"1 ids are not in the sample submission \(e.g. ID_zzz_any\)"),
    (lambda s: s.rename(columns={"Label": "label"}), r"columns must be \['ID', 'Label'\]"),
])
def test_validator_rejects_with_a_clear_message(change, message):
    with pytest.raises(SubmissionError, match=message):
        validate_rsna_submission(change(_sub(expected_row_ids(IDS))), expected_row_ids(IDS))


def test_submission_follows_the_sample_order_and_fills_quarantined_test_images(tmp_path):
    from ichkit.outputs.ensemble import ensemble_test, run_stack
    from ichkit.outputs.submit import submit

    w = make_work(tmp_path, n_patients=12, quarantine_test=2)
    table = w["table"]
    test_ids = table.loc[table["split"] == "test", "image_id"].astype(str).tolist()
    quarantined = table.loc[table["status"] == "quarantined", "image_id"].astype(str).tolist()
    # a sample submission in its own order: images reversed, labels in the Kaggle file's order
    order = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    rows = [f"{i}_{lab}" for i in reversed(test_ids) for lab in order]
    _sub(rows).to_csv(tmp_path / "stage_2_sample_submission.csv", index=False)

    ens = run_stack(w["cfg"], progress=False)
    sidecar = submit(w["cfg"])
    rsna = pd.read_csv(sidecar["files"]["rsna"])
    assert rsna["ID"].tolist() == rows
    assert rsna["Label"].between(0, 1).all() and rsna["Label"].notna().all()

    pred = ensemble_test(w["work"], ens).set_index("image_id")
    by_id = rsna.set_index("ID")["Label"]
    ok_id = next(i for i in test_ids if i not in quarantined)
    for lab in RSNA_LABELS:
        assert by_id[f"{ok_id}_{lab}"] == pytest.approx(pred.loc[ok_id, f"rsna_{lab}"], abs=1e-6)
    # the quarantined test images get the training prior, and the sidecar lists them with the reason
    train = table[table["split"] == "train"]
    for lab in RSNA_LABELS:
        assert by_id[f"{quarantined[0]}_{lab}"] == pytest.approx(train[lab].astype(float).mean(), abs=1e-6)
    listed = {i["image_id"]: i for i in sidecar["fallback"]["images"]}
    assert set(listed) == set(quarantined) and listed[quarantined[0]]["reason"] == "truncated"

    c7 = pd.read_csv(sidecar["files"]["class7"])
    assert c7["image_id"].tolist() == test_ids
    assert np.allclose(c7[list(CLASSES7)].sum(axis=1), 1, atol=1e-5)
    assert (c7["predicted_class"] == c7[list(CLASSES7)].idxmax(axis=1)).all()

    saved = json.loads(open(sidecar["files"]["sidecar"]).read())
    run_id = saved["run_id"]
    assert all(run_id in p for p in saved["files"].values())
    assert saved["ensemble"]["winner"] == ens["winner"] and saved["folds"] == [0, 1, 2]
    assert set(saved["oof_scores"]) == {"single", "mean", "stack"}
    assert saved["settings"]["paths"]["work"] == str(w["work"])
