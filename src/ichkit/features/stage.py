"""Stage `features`: compute (and cache) the feature sets of every prepared image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from ichkit.features.settings import FEATURE_SETS, FeatureError
from ichkit.features.store import ensure_features, features_dir

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sets", nargs="+", choices=FEATURE_SETS, default=list(FEATURE_SETS),
                        help="feature sets to compute (default: all)")
    parser.add_argument("--force", action="store_true", help="recompute even if cached with the same settings")
    parser.add_argument("--workers", type=int, default=None, help="processes (default features.workers; 0 = all cores)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    if args.workers is not None:
        cfg["features"]["workers"] = args.workers
    slices = read_table(work).slices
    ids = slices.loc[slices["status"] == "ok", "image_id"].tolist()
    if not ids:
        raise FeatureError(f"no prepared images in {work}/table.parquet (status ok): run `ichkit prepare` first")
    if args.force:
        for s in args.sets:
            (features_dir(work) / f"{s}.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    frames = ensure_features(work, ids, cfg, args.sets)
    dt = time.perf_counter() - t0
    for s, df in frames.items():
        print(f"{s}: {df.shape[0]} images x {df.shape[1]} features -> {features_dir(work) / (s + '.parquet')}")
    if "radiomic" in frames:
        print(brain_mask_report(frames["radiomic"], cfg))
    print(f"{len(ids)} images in {dt:.1f} s ({len(ids) / max(dt, 1e-9):.1f} images/s, cached ones included)")
    return 0


def brain_mask_report(radiomic: "pd.DataFrame", cfg: dict[str, Any]) -> str:
    """How each slice's brain mask was made: the skull closed by the first closing radius, by a wider one
    (skull base, vertex, sutures), or the convex-hull fallback."""
    first = float(cfg["features"]["skull_close_px"][0])
    n = max(len(radiomic), 1)
    hull = int((radiomic["brain_mask_from_hull"] > 0).sum())
    wider = int(((radiomic["brain_mask_closing"] > first) & (radiomic["brain_mask_from_hull"] == 0)).sum())
    return (f"brain mask: skull closed at {first:g} px on {(n - hull - wider) / n:.1%}, by a wider closing on "
            f"{wider / n:.1%}, convex-hull fallback on {hull / n:.1%} of {len(radiomic)} slices")
