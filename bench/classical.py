"""Benchmark of the classical model track on the demo data: feature speed, wall time, peak memory, scores.

    .venv/bin/python bench/classical.py [--patients N] [--models all|NAME,...] [--workers N]

On the phantom demo (`demo.patients` patients unless --patients; written once into the temp folder and
reused, like bench/prepare.py) it runs, in a fresh work folder:
  prepare -> folds (`folds.k`) -> features, computed from scratch (images/s) -> train every model of
  `train.models` on every fold -> evaluate,
and reports the feature extraction rate, the wall time of the classical track (features + train +
evaluate) with each model's share, the peak resident memory of this process (`resource.getrusage`), and
the out-of-fold scores. Printed and written to bench/results/classical.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ichkit.config import load_config  # noqa: E402
from ichkit.phantom import cached_dataset  # noqa: E402

RESULTS = REPO / "bench" / "results" / "classical.json"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (where every model is trained), in MB (Linux reports KiB).

    Worker processes are left out on purpose: Linux starts a forked child's peak at its parent's, so the
    children's figure would only repeat this one.
    """
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=None, help="demo patients (default demo.patients)")
    parser.add_argument("--models", default="all", help="comma-separated models, or 'all' = train.models")
    parser.add_argument("--workers", type=int, default=0, help="feature / prepare processes (0 = all cores)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here instead of a temp one")
    args = parser.parse_args(argv)

    from ichkit import readers
    from ichkit.evaluate import SUMMARY_COLUMNS, evaluate_models
    from ichkit.features import _workers, ensure_features
    from ichkit.folds import make_folds, write_folds
    from ichkit.prepare import prepare_dataset
    from ichkit.table import read_table
    from ichkit.train import model_names, train_models

    cfg = load_config()
    patients = args.patients or int(cfg["demo"]["patients"])
    root = cached_dataset(patients, int(cfg["demo"]["seed"]), float(cfg["demo"]["test_fraction"]))
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="ichkit-bench-classical-")
        base = Path(tmp.name)
    else:
        base = args.keep
        shutil.rmtree(base, ignore_errors=True)
    work = base / "work"
    cfg["paths"]["work"] = str(work)
    cfg["paths"]["folds"] = str(base / "folds.csv")
    cfg["features"]["workers"] = args.workers
    names = model_names(args.models.split(","), cfg)

    try:
        t0 = time.perf_counter()
        prepare_dataset(readers.read_dataset(root), work, cfg, workers=args.workers or None, progress=False)
        slices = read_table(work).slices
        folds = make_folds(slices, int(cfg["folds"]["k"]), int(cfg["folds"]["seed"]))
        write_folds(folds, Path(cfg["paths"]["folds"]), {"k": int(cfg["folds"]["k"]), "seed": int(cfg["folds"]["seed"])})
        prepare_s = time.perf_counter() - t0
        ok_ids = slices.loc[slices["status"] == "ok", "image_id"].tolist()
        print(f"{len(ok_ids)} prepared images ({len(folds)} training, {int(cfg['folds']['k'])} folds) "
              f"in {prepare_s:.1f} s; timing the classical track", flush=True)

        t0 = time.perf_counter()
        ensure_features(work, ok_ids, cfg)
        features_s = time.perf_counter() - t0

        model_seconds: dict[str, float] = {}
        for name in names:
            t = time.perf_counter()
            train_models([name], cfg, force=True, use_tuned=False)
            model_seconds[name] = round(time.perf_counter() - t, 2)
        train_s = sum(model_seconds.values())

        t0 = time.perf_counter()
        table = evaluate_models(work, slices, names)
        evaluate_s = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()

    workers = _workers(cfg)  # the count feature extraction really used
    scores = table[list(SUMMARY_COLUMNS)]
    result = {
        "data": str(root),
        "patients": patients,
        "images": len(ok_ids),
        "training_images": len(folds),
        "folds": int(cfg["folds"]["k"]),
        "models": names,
        "features": {"seconds": round(features_s, 2), "images_per_s": round(len(ok_ids) / features_s, 1),
                     "workers": workers},
        "seconds": {"prepare_and_folds": round(prepare_s, 2), "features": round(features_s, 2),
                    "train": round(train_s, 2), "evaluate": round(evaluate_s, 2),
                    "classical_track": round(features_s + train_s + evaluate_s, 2)},
        "train_seconds_per_model": model_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "oof_scores": {m: {k: round(float(v), 4) for k, v in row.items()} for m, row in scores.iterrows()},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nfeature extraction : {result['features']['images_per_s']:.1f} images/s "
          f"({len(ok_ids)} images, {workers} worker(s), {features_s:.1f} s)")
    print(f"classical track    : {result['seconds']['classical_track']:.1f} s wall "
          f"(features {features_s:.1f} + train {train_s:.1f} + evaluate {evaluate_s:.1f}); "
          f"{len(names)} models x {result['folds']} folds")
    for name, seconds in sorted(model_seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {seconds:7.1f} s")
    print(f"peak memory (RSS)  : {result['peak_rss_mb']:.0f} MB")
    print("\nout-of-fold scores, best balanced accuracy first:")
    print(scores.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\n-> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
