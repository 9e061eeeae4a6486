"""Metrics against values worked out by hand, and cross-checks with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from ichkit import metrics
from ichkit.labels import CLASSES7, RSNA_LABELS

# --- RSNA weighted multi-label log loss ---------------------------------------------------------------
# columns: any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural; weights 2,1,1,1,1,1
Y6_HAND = np.array([
    [1, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 1],
])
P6_HAND = np.array([
    [0.9, 0.8, 0.1, 0.1, 0.1, 0.1],
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    [0.2, 0.1, 0.1, 0.1, 0.1, 0.5],
])
# row 1: any -ln .9 = .105361 (x2), epidural -ln .8 = .223144, 4 negatives at .1: -ln .9 = .105361 each
#        (2*.105361 + .223144 + 4*.105361) / 7 = .855310 / 7 = .122187
# row 2: every label -ln .5 = .693147; (7 * .693147) / 7 = .693147
# row 3: any -ln .2 = 1.609438 (x2) = 3.218876; 4 negatives -ln .9 = .421442; subdural -ln .5 = .693147
#        (3.218876 + .421442 + .693147) / 7 = 4.333465 / 7 = .619066
# mean over rows: (.122187 + .693147 + .619066) / 3 = 1.434400 / 3 = .478133
RSNA_HAND = 0.478133


def test_rsna_log_loss_matches_hand_computed_example():
    assert metrics.rsna_log_loss(Y6_HAND, P6_HAND) == pytest.approx(RSNA_HAND, abs=1e-6)


def test_rsna_log_loss_per_label_means():
    per_label = metrics.rsna_label_log_losses(Y6_HAND, P6_HAND)
    # any: (-ln .9 - ln .5 - ln .2) / 3 = (.105361 + .693147 + 1.609438) / 3 = .802649
    assert per_label["any"] == pytest.approx(0.802649, abs=1e-6)
    # subdural: (-ln .9 - ln .5 - ln .5) / 3 = (.105361 + .693147 + .693147) / 3 = .497218
    assert per_label["subdural"] == pytest.approx(0.497218, abs=1e-6)
    assert list(per_label) == list(RSNA_LABELS)


def test_rsna_log_loss_equals_sklearn_when_all_six_labels_are_one_binary_problem():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=200)
    p = rng.uniform(0.01, 0.99, size=200)
    # same label and probability in every column: the weighted mean of six equal losses is that loss
    y6 = np.repeat(y[:, None], 6, axis=1)
    p6 = np.repeat(p[:, None], 6, axis=1)
    assert metrics.rsna_log_loss(y6, p6) == pytest.approx(log_loss(y, p), rel=1e-12)


def test_rsna_log_loss_is_the_weighted_average_of_sklearn_per_label_losses():
    rng = np.random.default_rng(1)
    y6 = rng.integers(0, 2, size=(300, 6))
    p6 = rng.uniform(0.001, 0.999, size=(300, 6))
    per_label = [log_loss(y6[:, j], p6[:, j], labels=[0, 1]) for j in range(6)]
    expected = (2 * per_label[0] + sum(per_label[1:])) / 7
    assert metrics.rsna_log_loss(y6, p6) == pytest.approx(expected, rel=1e-12)


def test_rsna_log_loss_clips_at_1e15():
    y6 = np.ones((2, 6))
    p6 = np.array([[0.0] * 6, [1.0] * 6])
    # row 1: every label -ln(1e-15) = 34.538776; row 2: -ln(1 - 1e-15) ~ 1e-15; mean = 17.269388
    assert metrics.rsna_log_loss(y6, p6) == pytest.approx(17.269388, abs=1e-6)
    # eps = 1e-3: row 1 -ln(1e-3) = 6.907755, row 2 -ln(1 - 1e-3) = .001001; (6.907755 + .001001) / 2 = 3.454378
    assert metrics.rsna_log_loss(y6, p6, eps=1e-3) == pytest.approx(3.454378, abs=1e-6)


# --- 7-class metrics -----------------------------------------------------------------------------------
E, SD, SA, IP, IV, MU, NO = range(7)  # CLASSES7 order
Y7_HAND = np.array([E, E, SD, MU, NO, NO, NO, NO])
PRED_HAND = np.array([E, NO, SD, IP, NO, NO, NO, MU])


def confident(pred: np.ndarray) -> np.ndarray:
    """0.7 on the predicted class, 0.05 on each of the other six (rows sum to 1)."""
    p = np.full((len(pred), 7), 0.05)
    p[np.arange(len(pred)), pred] = 0.7
    return p


P7_HAND = confident(PRED_HAND)


def test_seven_class_metrics_match_hand_computed_values():
    # correct rows: 0, 2, 4, 5, 6 -> 5 / 8
    assert metrics.accuracy(Y7_HAND, P7_HAND) == pytest.approx(0.625)
    recall = metrics.per_class_recall(Y7_HAND, P7_HAND)
    # epidural 1 of 2, subdural 1 of 1, multi 0 of 1, normal 3 of 4; the others are absent from y_true
    assert recall["epidural"] == 0.5 and recall["subdural"] == 1.0 and recall["multi"] == 0.0
    assert recall["normal"] == 0.75
    assert all(np.isnan(recall[c]) for c in ("subarachnoid", "intraparenchymal", "intraventricular"))
    # mean recall over the 4 classes present: (.5 + 1 + 0 + .75) / 4 = .5625
    assert metrics.balanced_accuracy(Y7_HAND, P7_HAND) == pytest.approx(0.5625)
    # F1 over classes true or predicted: epidural P=1 R=.5 -> 2/3; subdural 1; intraparenchymal (only a
    # false positive) 0; multi 0; normal P=3/4 R=3/4 -> .75.  (2/3 + 1 + 0 + 0 + .75) / 5 = .483333
    assert metrics.macro_f1(Y7_HAND, P7_HAND) == pytest.approx(0.483333, abs=1e-6)


def test_macro_auc_matches_hand_computed_value():
    # one-vs-rest over classes present in y_true, counting ties as 1/2:
    # epidural: positives .7, .05 vs six negatives at .05 -> (6 + 3) / 12 = .75
    # subdural: positive .7 vs seven negatives at .05 -> 1
    # multi: positive .05 vs negatives (.7, six at .05) -> (0 + 3) / 7 = .428571
    # normal: positives (.7, .7, .7, .05) vs negatives (.05, .7, .05, .05) -> (3 * 3.5 + 1.5) / 16 = .75
    # mean: (.75 + 1 + .428571 + .75) / 4 = .732143
    assert metrics.macro_auc(Y7_HAND, P7_HAND) == pytest.approx(0.732143, abs=1e-6)


def test_confusion_counts_and_row_normalised():
    counts = metrics.confusion(Y7_HAND, P7_HAND)
    assert list(counts.index) == list(CLASSES7) and list(counts.columns) == list(CLASSES7)
    assert counts.loc["epidural", "epidural"] == 1 and counts.loc["epidural", "normal"] == 1
    assert counts.loc["multi", "intraparenchymal"] == 1
    assert counts.loc["normal", "normal"] == 3 and counts.loc["normal", "multi"] == 1
    assert counts.to_numpy().sum() == len(Y7_HAND)
    rows = metrics.confusion(Y7_HAND, P7_HAND, normalize=True)
    assert rows.loc["epidural"].tolist() == [0.5, 0, 0, 0, 0, 0, 0.5]
    assert rows.loc["normal", "normal"] == 0.75
    # absent classes: no recall profile, NaN instead of a row of zeros
    assert rows.loc["subarachnoid"].isna().all() and rows.loc["intraventricular"].isna().all()


def test_class_names_are_accepted_as_truth():
    names = np.array([CLASSES7[i] for i in Y7_HAND])
    assert metrics.accuracy(names, P7_HAND) == metrics.accuracy(Y7_HAND, P7_HAND)
    with pytest.raises(ValueError, match="unknown 7-class label 'bleed'"):
        metrics.accuracy(np.array(["bleed"] * 8), P7_HAND)


def test_any_accuracy_and_auc_match_hand_computed_values():
    y6 = np.zeros((8, 6), dtype=int)
    y6[:4, 0] = 1
    y6[:4, 1] = 1
    p6 = np.full((8, 6), 0.1)
    p6[:, 0] = [0.9, 0.3, 0.8, 0.6, 0.1, 0.2, 0.4, 0.7]
    # calls at .5: 1 0 1 1 0 0 0 1 vs truth 1 1 1 1 0 0 0 0 -> rows 0,2,3,4,5,6 right = 6 / 8
    assert metrics.any_accuracy(y6, p6) == pytest.approx(0.75)
    # positives .9 .8 .6 .3 beat negatives (.1 .2 .4 .7): 4 + 4 + 3 + 2 = 13 of 16 pairs
    assert metrics.any_auc(y6, p6) == pytest.approx(13 / 16)


def test_score_predictions_keys_and_values():
    y6 = np.zeros((8, 6), dtype=int)
    y6[:4, 0] = 1
    p6 = np.full((8, 6), 0.5)
    scores = metrics.score_predictions(Y7_HAND, P7_HAND, y6, p6)
    assert tuple(scores) == metrics.SCORE_KEYS
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["accuracy"] == pytest.approx(0.625)
    assert scores["macro_auc"] == pytest.approx(0.732143, abs=1e-6)
    assert scores["rsna_logloss"] == pytest.approx(np.log(2))  # every probability 0.5
    assert scores["recall_normal"] == 0.75 and np.isnan(scores["recall_subarachnoid"])
    with pytest.raises(ValueError, match="7-class truth has 8 rows but RSNA truth 3"):
        metrics.score_predictions(Y7_HAND, P7_HAND, Y6_HAND, P6_HAND)


def test_single_class_truth_does_not_crash():
    y7 = np.full(5, NO)
    p7 = confident(np.array([NO, NO, MU, NO, E]))
    y6 = np.zeros((5, 6), dtype=int)
    scores = metrics.score_predictions(y7, p7, y6, np.full((5, 6), 0.2))
    assert scores["accuracy"] == pytest.approx(0.6) and scores["balanced_accuracy"] == pytest.approx(0.6)
    assert np.isnan(scores["macro_auc"]) and np.isnan(scores["any_auc"])
    assert scores["any_accuracy"] == 1.0
    assert np.isnan(scores["recall_epidural"])


def test_bad_inputs_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match=r"7-class probabilities must have shape \(8, 7\), got \(8, 6\)"):
        metrics.accuracy(Y7_HAND, P7_HAND[:, :6])
    with pytest.raises(ValueError, match=r"finite probabilities in \[0, 1\]"):
        metrics.rsna_log_loss(Y6_HAND, P6_HAND + 0.5)
    with pytest.raises(ValueError, match="RSNA labels must be 0 or 1"):
        metrics.rsna_log_loss(Y6_HAND * 2, P6_HAND)
    with pytest.raises(ValueError, match=r"index 7 out of range"):
        metrics.accuracy(np.array([7]), np.full((1, 7), 1 / 7))
