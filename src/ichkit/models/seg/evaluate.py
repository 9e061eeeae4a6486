"""The segmentation table of `evaluate`: every seg model's OOF masks beside two baselines measured in
the same run on the same images (the third baseline, `hu_threshold_seg`, is a seg model of its own).

Rows: each model with a merged ``<work>/seg_oof/<model>.parquet``, plus ``baseline_empty`` (no blood
anywhere) and ``baseline_all_brain`` (the whole brain mask of every slice). Columns: `SEG_TABLE_COLUMNS`,
the pixel scores of `metrics.segmentation_summary` (mean Dice / IoU over slices with blood, pooled Dice,
pixel precision and recall, false-positive rate on normal slices) and the per-study volume error
(mean absolute error in mL and correlation) against the dataset's ``_truth/volumes.csv`` where it has one
(the phantom), else against the volumes of the ground-truth masks. Only images with a known pixel truth
(masked or normal) are scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEG_TABLE_COLUMNS: tuple[str, ...] = ("n_images", "n_blood", "mean_dice", "mean_iou", "pooled_dice", "pixel_precision",
                                      "pixel_recall", "normal_fp_rate", "volume_mae_ml", "volume_corr")
BASELINES: tuple[str, ...] = ("baseline_empty", "baseline_all_brain")


def _volumes(areas: pd.DataFrame, sized: pd.DataFrame, size: int) -> pd.DataFrame:
    from ichkit.outputs.masks import study_volumes

    return study_volumes(areas.assign(mask_height=size, mask_width=size), sized)


def _row(tp, n_pred, n_true, normal, ids, sized, size, truth_volumes) -> dict[str, Any]:
    from ichkit.metrics import segmentation_summary
    from ichkit.outputs.masks import volume_agreement

    scores = segmentation_summary(tp, n_pred, n_true, normal)
    vol = volume_agreement(_volumes(pd.DataFrame({"image_id": ids, "area_px": n_pred}), sized, size), truth_volumes)
    return {"n_images": len(ids), "n_blood": int((np.asarray(n_true) > 0).sum()), **scores,
            "volume_mae_ml": vol["volume_mae_ml"], "volume_corr": vol["volume_corr"]}


def _all_brain_counts(work: Path, data: Any, ids: list[str], n_true: np.ndarray) -> np.ndarray:
    """mask_counts (blood inside the brain mask, brain pixels, blood pixels) per image: the all-brain baseline.

    Kept in ``<work>/seg_oof/.all_brain-<key>.npy``: the brain masks of ~1,800 slices take ~45 s, and
    `segment`, `evaluate` and `report` each draw the table. The key holds what the counts depend on: the
    images, their true areas (the cached masks), the brain-mask settings and the mask size.
    """
    import dataclasses
    import hashlib
    import json

    from ichkit.files import atomic_path
    from ichkit.metrics import mask_counts

    key = hashlib.sha256(json.dumps({"ids": list(ids), "n_true": np.asarray(n_true).tolist(), "size": data.size,
                                     "brain": dataclasses.asdict(data.features)}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = work / "seg_oof" / f".all_brain-{key}.npy"
    if path.is_file():
        return np.load(path)
    counts = np.array([mask_counts(data.brain(i), data.truth(i)) for i in ids], dtype=np.float64).reshape(-1, 3)
    for stale in path.parent.glob(".all_brain-*.npy"):
        stale.unlink(missing_ok=True)
    with atomic_path(path) as tmp:  # the temporary name keeps the .npy suffix, so np.save adds none
        np.save(tmp, counts)
    return counts


def seg_table(cfg: dict[str, Any], models: list[str] | None = None) -> pd.DataFrame:
    """One row per seg model with merged OOF files and per baseline (index `model`), best mean Dice first."""
    from ichkit.models.seg import results
    from ichkit.models.seg.data import SegData
    from ichkit.outputs.masks import read_truth_volumes, slices_with_sizes
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    names = results.list_models(work) if models is None else models
    if not names:
        return pd.DataFrame(columns=list(SEG_TABLE_COLUMNS))
    ds = read_table(work)
    sized = slices_with_sizes(work)
    data = SegData(work, cfg)
    oofs = {n: results.read_oof(work, n) for n in names}
    ids = sorted(set.intersection(*(set(o.loc[o["truth"] != "unknown", "image_id"]) for o in oofs.values())))
    first = oofs[names[0]].set_index("image_id").loc[ids]
    n_true = first["true_area_px"].astype(int).to_numpy()
    normal = (first["truth"] == "normal").to_numpy()

    truth_volumes = read_truth_volumes(ds.root)
    if truth_volumes is None:  # no phantom truth: the volumes of the ground-truth masks
        truth_volumes = _volumes(pd.DataFrame({"image_id": ids, "area_px": n_true}), sized, data.size)
    train_studies = set(sized.loc[sized["image_id"].isin(ids), "study_id"])
    truth_volumes = truth_volumes[truth_volumes["study_id"].isin(train_studies)]

    rows = {}
    for name, oof in oofs.items():
        o = oof.set_index("image_id").loc[ids]
        rows[name] = _row(o["tp_px"].to_numpy(), o["pred_area_px"].to_numpy(), n_true, normal, ids, sized, data.size,
                          truth_volumes)
    zeros = np.zeros(len(ids))
    rows["baseline_empty"] = _row(zeros, zeros, n_true, normal, ids, sized, data.size, truth_volumes)
    counts = _all_brain_counts(work, data, ids, n_true)
    rows["baseline_all_brain"] = _row(counts[:, 0], counts[:, 1], n_true, normal, ids, sized, data.size, truth_volumes)
    table = pd.DataFrame.from_dict(rows, orient="index")[list(SEG_TABLE_COLUMNS)]
    table.index.name = "model"
    return table.sort_values("mean_dice", ascending=False, kind="stable")


def print_seg_table(cfg: dict[str, Any]) -> pd.DataFrame | None:
    """Compute, print and write the table (``<work>/seg_evaluation.csv`` and ``.md``); None without seg OOF."""
    from ichkit.evaluate import markdown_table

    work = Path(cfg["paths"]["work"])
    table = seg_table(cfg)
    if table.empty:
        return None
    csv_path, md_path = work / "seg_evaluation.csv", work / "seg_evaluation.md"
    table.to_csv(csv_path, float_format="%.6f")
    md_path.write_text("Segmentation, out-of-fold (mean Dice over slices with blood first)\n\n" + markdown_table(table.astype(object)))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print("\nsegmentation, out-of-fold (baselines measured on the same images):")
        print(table.to_string())
    print(f"-> {csv_path}, {md_path}")
    return table
