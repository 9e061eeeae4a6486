"""Benchmark of the fold driver's own cost: per-unit overhead of the driver and of the Ray executor.

    .venv/bin/python bench/engine.py [--patients N] [--models all|NAME,...] [--no-ray]

On the phantom demo (`demo.patients` patients unless --patients; prepared once into a temp work folder
through the CLI stages, features computed before any timing) it measures, each in the same run:

- a no-op model (fit does nothing, predict returns the training prior) over every fold with the local
  executor: the driver's per-unit overhead (plan, split, fingerprint, prediction checks, parquet writes,
  scoring, merge);
- the same no-op model through a local Ray instance (``ray.init(num_cpus=cores)``, started once and timed
  apart): the Ray executor's per-unit overhead (task dispatch, shipping the job and the fold folder);
- the classical track (`train.models`, or --models) on every fold with the local executor, then with Ray,

and prints each as seconds and as a share of the local classical track. Written to
bench/results/engine.json. Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ichkit.config import load_config  # noqa: E402
from ichkit.engine.trainer import FoldTrainer  # noqa: E402

RESULTS = REPO / "bench" / "results" / "engine.json"


class NoopTrainer(FoldTrainer):
    """Fits nothing and predicts the training prior: what is left is the driver's own cost."""

    def __init__(self, spec, params, ctx) -> None:
        self.ctx = ctx

    def fit(self, train_ids, valid_ids, fold_dir, resume) -> None:
        from ichkit.heads import class_prior

        self.prior = class_prior(self.ctx.labels["y7"].to_numpy())

    def predict(self, ids):
        from ichkit.heads import rsna_from_class7
        from ichkit.oof import predictions_frame

        p7 = np.tile(self.prior, (len(ids), 1))
        return predictions_frame(list(ids), self.ctx.fold, p7, rsna_from_class7(p7, np.full(5, 0.4)))

    def save(self, fold_dir) -> None:
        pass

    @classmethod
    def load(cls, fold_dir, ctx):
        raise NotImplementedError


def register_noop() -> str:
    from ichkit.models import FAMILY_MODULES, ModelSpec, register

    FAMILY_MODULES.setdefault("bench", "bench_engine_noop")  # nothing to import: registered right here
    register(ModelSpec(name="noop", family="bench", features=(), trainer=NoopTrainer, description="no-op"))
    return "noop"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=None, help="demo patients (default demo.patients)")
    parser.add_argument("--models", default="all", help="comma-separated classical models, or 'all' = train.models")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray measurements")
    args = parser.parse_args(argv)

    from ichkit.cli import main as cli
    from ichkit.engine.driver import make_plan, train_models
    from ichkit.features import ensure_features
    from ichkit.models import get_model_spec
    from ichkit.phantom import cached_dataset
    from ichkit.train import model_names

    cfg = load_config()
    patients = args.patients or int(cfg["demo"]["patients"])
    root = cached_dataset(patients, int(cfg["demo"]["seed"]), float(cfg["demo"]["test_fraction"]))
    tmp = tempfile.TemporaryDirectory(prefix="ichkit-bench-engine-")
    base = Path(tmp.name)
    cfg["paths"]["work"] = str(base / "work")
    cfg["paths"]["folds"] = str(base / "folds.csv")
    common = ["--work", cfg["paths"]["work"], "--set", f"paths.folds={cfg['paths']['folds']}"]
    names = model_names(args.models.split(","), cfg)
    noop = register_noop()
    cores = os.cpu_count() or 1
    seconds: dict[str, float] = {}
    try:
        if cli(["prepare", "--data", str(root), *common]) or cli(["folds", *common]):
            raise SystemExit("prepare / folds failed")
        plan = make_plan(cfg)
        sets = tuple(dict.fromkeys(s for n in names for s in get_model_spec(n).features))
        ensure_features(cfg["paths"]["work"], plan.labels.index.tolist() + plan.test_ids, cfg, sets, progress=False)
        units = len(plan.fold_ids)
        print(f"{len(plan.labels)} training images, {len(plan.test_ids)} test images, {units} folds; "
              f"{len(names)} classical models", flush=True)

        seconds["noop_local"] = timed(lambda: train_models([noop], cfg, force=True, progress=False))
        merged: dict[str, dict] = {}
        seconds["classical_local"] = timed(lambda: merged.update(
            local=train_models(names, cfg, force=True, use_tuned=False, progress=False)))
        if not args.no_ray:
            import ray

            seconds["ray_init"] = timed(lambda: ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False))
            try:
                seconds["noop_ray"] = timed(lambda: train_models([noop], cfg, force=True, executor="ray", progress=False))
                seconds["classical_ray"] = timed(lambda: merged.update(
                    ray=train_models(names, cfg, force=True, use_tuned=False, executor="ray", progress=False)))
            finally:
                ray.shutdown()
    finally:
        tmp.cleanup()

    track = seconds["classical_local"]
    # the executors must not change a single prediction
    identical = ({n: bool(merged["local"][n].equals(merged["ray"][n])) for n in names} if "ray" in merged else {})
    result = {
        "patients": patients, "folds": units, "models": names, "cores": cores,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "per_unit_seconds": {"driver_noop_local": round(seconds["noop_local"] / units, 3),
                             **({"driver_noop_ray": round(seconds["noop_ray"] / units, 3)} if "noop_ray" in seconds else {})},
        "share_of_classical_track": {k: round(seconds[k] / track, 4) for k in ("noop_local", "noop_ray", "classical_ray")
                                     if k in seconds},
        "ray_oof_identical_to_local": identical,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": cores},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    n_units = len(names) * units
    print(f"\nclassical track, local : {track:7.1f} s  ({n_units} units)")
    print(f"no-op model, local     : {seconds['noop_local']:7.2f} s  = {seconds['noop_local'] / units:.3f} s per unit, "
          f"{seconds['noop_local'] / track:.1%} of the classical track "
          f"(x{len(names)} models: {seconds['noop_local'] * len(names) / track:.1%})")
    if "noop_ray" in seconds:
        print(f"ray.init               : {seconds['ray_init']:7.2f} s (once per run)")
        print(f"no-op model, Ray       : {seconds['noop_ray']:7.2f} s  = {seconds['noop_ray'] / units:.3f} s per unit, "
              f"{seconds['noop_ray'] / track:.1%} of the classical track")
        print(f"classical track, Ray   : {seconds['classical_ray']:7.1f} s  = {seconds['classical_ray'] / track:.2f}x the "
              f"local track ({cores} cores; Ray runs {cores} units at once); OOF identical to local: "
              f"{all(identical.values())} ({sum(identical.values())}/{len(identical)} models)")
    print(f"\n-> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
