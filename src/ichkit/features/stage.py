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
    (sutures, gaps), the soft-tissue fill of an open ring (skull base, vertex, craniotomy), no brain in view
    (a solid bone plate), or the convex-hull fallback."""
    first = float(cfg["features"]["skull_close_px"][0])
    n = max(len(radiomic), 1)
    hull = radiomic["brain_mask_from_hull"] > 0
    soft = radiomic["brain_mask_soft_fill"] > 0
    closing = radiomic["brain_mask_closing"]
    counts = {"skull closed at %g px" % first: int(((closing > 0) & (closing <= first)).sum()),
              "by a wider closing": int((closing > first).sum()),
              "soft-tissue fill of an open ring": int(soft.sum()),
              "no brain in view": int(((closing == 0) & ~soft & ~hull).sum()),
              "convex-hull fallback": int(hull.sum())}
    return "brain mask: " + ", ".join(f"{k} on {v / n:.1%}" for k, v in counts.items()) + f" of {len(radiomic)} slices"
