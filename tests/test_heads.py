"""The RSNA head (`ichkit.heads`): 7 classes -> 6 RSNA labels, the multi share, the prior correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichkit import heads
from ichkit.labels import CLASS7_INDEX, RSNA_LABELS, SUBTYPES


# --- 7 classes -> RSNA labels ----------------------------------------------------------------------------
def test_rsna_from_class7_properties_on_random_distributions():
    rng = np.random.default_rng(0)
    p7 = rng.dirichlet(np.full(7, 0.3), size=2000)
    share = rng.uniform(0, 1, size=5)
    p6 = heads.rsna_from_class7(p7, share)
    assert p6.shape == (2000, 6)
    assert ((p6 >= 0) & (p6 <= 1)).all()
    assert (p6[:, 1:] <= p6[:, :1] + 1e-12).all()  # no subtype above any
    np.testing.assert_allclose(p6[:, 0], 1 - p7[:, CLASS7_INDEX["normal"]])
    for j, s in enumerate(SUBTYPES, start=1):
        np.testing.assert_allclose(p6[:, j], p7[:, CLASS7_INDEX[s]] + p7[:, CLASS7_INDEX["multi"]] * share[j - 1])


def test_rsna_from_class7_on_certain_predictions():
    share = np.array([0.1, 0.9, 0.6, 0.7, 0.2])  # SUBTYPES order: epidural, iph, ivh, sah, sdh
    eye = np.eye(7)
    p6 = heads.rsna_from_class7(eye, share)
    # a certain single subtype: any = 1 and only that subtype
    for c in ("epidural", "subdural", "subarachnoid", "intraparenchymal", "intraventricular"):
        expected = np.zeros(6)
        expected[0], expected[RSNA_LABELS.index(c)] = 1, 1
        np.testing.assert_allclose(p6[CLASS7_INDEX[c]], expected)
    np.testing.assert_allclose(p6[CLASS7_INDEX["multi"]], [1, 0.1, 0.9, 0.6, 0.7, 0.2])
    np.testing.assert_allclose(p6[CLASS7_INDEX["normal"]], np.zeros(6))
    # float noise above 1 is clipped
    noisy = eye[[CLASS7_INDEX["multi"]]] * (1 + 1e-9)
    assert heads.rsna_from_class7(noisy, np.ones(5)).max() <= 1.0


def test_rsna_from_class7_rejects_bad_shares():
    with pytest.raises(ValueError, match="multi_share must be 5 values in"):
        heads.rsna_from_class7(np.eye(7), np.full(5, 1.5))
    with pytest.raises(ValueError, match=r"p7 must have shape \(n, 7\)"):
        heads.rsna_from_class7(np.eye(6), np.full(5, 0.5))


def labels_frame(rows: list[tuple[int, ...]]) -> pd.DataFrame:
    """Rows of (epidural, iph, ivh, sah, sdh) flags -> RSNA label frame with `any`."""
    frame = pd.DataFrame(rows, columns=list(SUBTYPES))
    frame.insert(0, "any", (frame.sum(axis=1) > 0).astype(int))
    return frame


def test_multi_share_from_labels_hand_example():
    labels = labels_frame([
        (0, 1, 1, 0, 0),  # multi: iph + ivh
        (0, 1, 0, 1, 0),  # multi: iph + sah
        (0, 1, 1, 1, 0),  # multi: iph + ivh + sah
        (1, 0, 0, 0, 0),  # single epidural: not multi
        (0, 0, 0, 0, 1),  # single subdural
        (0, 0, 0, 0, 0),  # normal
    ])
    # unsmoothed: epidural 0/3, iph 3/3, ivh 2/3, sah 2/3, sdh 0/3
    np.testing.assert_allclose(heads.multi_share_from_labels(labels, prior_weight=0), [0, 1, 2 / 3, 2 / 3, 0])
    # one pseudo-slice at 2/5: (count + .4) / (3 + 1) -> .1, .85, .6, .6, .1
    np.testing.assert_allclose(heads.multi_share_from_labels(labels), [0.1, 0.85, 0.6, 0.6, 0.1])


def test_multi_share_falls_back_to_the_prior_without_multi_slices():
    labels = labels_frame([(1, 0, 0, 0, 0), (0, 0, 0, 0, 0)])
    np.testing.assert_allclose(heads.multi_share_from_labels(labels), np.full(5, 0.4))
    np.testing.assert_allclose(heads.multi_share_from_labels(labels, prior_weight=0), np.full(5, 0.4))
    unlabelled = labels.astype("Int8")
    unlabelled.loc[0, "subdural"] = pd.NA
    with pytest.raises(heads.HeadError, match="1 rows without subtype labels"):
        heads.multi_share_from_labels(unlabelled)


