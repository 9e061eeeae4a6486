"""Stage `all`: the main job. Runs the stages in order through the same CLI a user would type.

demo data (only when the input folder holds no dataset) -> prepare -> folds -> train (every model of
`--models` / `train.models` whose family is registered: classical, and the CNN classifiers once their
family exists; the others are named and skipped) -> segment (the segmentation models among them; "all"
adds `seg.models` when that family's section exists) -> evaluate -> stack (the ensemble choice)
-> submit (submissions/) -> report (work/report/). Each stage skips work that is already done, so a
re-run is fast. ``--profile NAME`` sets ``<section>.profile`` of every config section that has one (the
network families' quick / full budgets). The last lines name every file written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset root or a folder holding one (default: paths.input); "
                             "when it holds no dataset, the phantom demo is written to demo.out")
    parser.add_argument("--models", default="all", help="models to train (comma list or 'all' = train.models)")
    parser.add_argument("--profile", default=None,
                        help="budget profile (e.g. quick, full) for every config section with a `profile` key")


def _common(args: argparse.Namespace, cfg: dict) -> list[str]:
    out: list[str] = []
    if args.config is not None:
        out += ["--config", str(args.config)]
    if args.profile is not None:  # before the user's --set, which wins
        for section in sorted(k for k, v in cfg.items() if isinstance(v, dict) and "profile" in v):
            out += ["--set", f"{section}.profile={args.profile}"]
    for o in args.overrides:
        out += ["--set", o]
    if args.work is not None:
        out += ["--work", str(args.work)]
    return out


def _find_or_make_data(args: argparse.Namespace, cfg: dict) -> tuple[Path, list[str]]:
    """The dataset to run on, and the demo-data stage call if one must be generated first."""
    from ichkit.readers import DatasetError, find_dataset

    if args.data is not None:
        root = find_dataset(args.data)
        if root is None:
            raise DatasetError(f"--data {args.data}: no dataset found there (see the README's input layouts)")
        return root, []
    input_dir = Path(cfg["paths"]["input"])
    root = find_dataset(input_dir) if input_dir.is_dir() else None
    if root is not None:
        return root, []
    demo = Path(cfg["demo"]["out"])
    # --force: a folder without demo.json is an interrupted generation; the generator removes only its own files
    return demo, ["demo-data", "--out", str(demo), "--force"]


def registered_models(requested: str, cfg: dict) -> tuple[list[str], list[str]]:
    """(models to train, models skipped because their family is not installed) of `--models`; "all" (alone
    or in the list) = train.models plus, where the segmentation family's config section exists, seg.models."""
    from ichkit.models import list_models

    defaults = list(cfg["train"]["models"] or []) + list((cfg.get("seg") or {}).get("models") or [])
    names: list[str] = []
    for n in (n.strip() for n in requested.split(",")):  # "all" may stand among names: all,cnn_baseline
        for m in defaults if n == "all" else [n]:
            if m and m not in names:
                names.append(m)
    known = set(list_models())
    return [n for n in names if n in known], [n for n in names if n not in known]


def training_stages(models: list[str]) -> list[list[str]]:
    """`train` for the classifiers, `segment` (the segmentation family's stage) for segmentation models."""
    from ichkit.models import get_model_spec

    seg = [m for m in models if get_model_spec(m).family == "seg"]
    classify = [m for m in models if m not in set(seg)]
    return ([["train", "--model", ",".join(classify)]] if classify else []) + \
        ([["segment", "--model", ",".join(seg)]] if seg else [])


def files_written(cfg: dict, root: Path) -> list[tuple[str, Path]]:
    """(what, path) of every file the main job leaves, for the final summary."""
    from ichkit import oof
    from ichkit.cache import ImageCache
    from ichkit.folds import folds_path, sidecar_path
    from ichkit.outputs.ensemble import ensemble_path, read_ensemble
    from ichkit.outputs.submit import run_id_of

    work = Path(cfg["paths"]["work"])
    cache = ImageCache(work)
    out: list[tuple[str, Path]] = [("data", root), ("table", work / "table.parquet"),
                                   ("cache", cache.root), ("quarantine", cache.quarantine_path),
                                   ("folds", folds_path(cfg)), ("folds sidecar", sidecar_path(folds_path(cfg)))]
    for m in oof.list_models(work):
        oof_path, test_path = oof.merged_paths(work, m)
        out += [(f"OOF {m}", oof_path), (f"test {m}", test_path)]
    out += [("evaluation", work / "evaluation.csv"), ("evaluation", work / "evaluation.md")]
    if ensemble_path(work).is_file():
        out.append(("ensemble", ensemble_path(work)))
        sidecar = Path(cfg["paths"]["submissions"]) / f"{run_id_of(read_ensemble(work))}.json"
        if sidecar.is_file():
            out += [(f"submission {k}", Path(v)) for k, v in json.loads(sidecar.read_text())["files"].items()]
    out += [("segmentation OOF", p) for p in sorted((work / "seg_oof").glob("*.parquet"))]
    out += [("segmentation table", work / "seg_evaluation.csv")]
    out += [("report", work / "report" / "report.html"), ("report", work / "report" / "report.md")]
    return [(what, path) for what, path in out if path.exists()]


def run(args: argparse.Namespace, cfg: dict) -> int:
    from ichkit.cli import main as cli_main
    from ichkit.models import ModelError

    common = _common(args, cfg)
    root, demo_call = _find_or_make_data(args, cfg)  # DatasetError (e.g. several datasets): cli.main reports it
    stages: list[list[str]] = []
    if demo_call and not (root / "demo.json").is_file():
        stages.append(demo_call)
    models, skipped = registered_models(args.models, cfg)
    if skipped:
        print(f"ichkit all: models {skipped} belong to families not installed here; skipped")
    if not models:
        raise ModelError(f"no model to train: --models {args.models!r} names no registered model")
    stages += [
        ["prepare", "--data", str(root)],
        ["folds"],
        *training_stages(models),
        ["evaluate"],
        ["stack"],
        ["submit"],
        ["report"],
    ]
    timings: list[tuple[str, float]] = []
    for i, stage in enumerate(stages, 1):
        print(f"\n=== [{i}/{len(stages)}] ichkit {' '.join(stage)}", flush=True)
        t0 = time.perf_counter()
        rc = cli_main(stage + common)
        timings.append((stage[0], time.perf_counter() - t0))
        if rc:
            print(f"stage {stage[0]} failed with exit code {rc}")
            return rc
    print("\n=== done")
    for name, seconds in timings:
        print(f"  {name:<10} {seconds:7.1f} s")
    print(f"  {'total':<10} {sum(t for _, t in timings):7.1f} s")
    print("files written:")
    for what, path in files_written(cfg, root):
        print(f"  {what + ':':<28} {path}")
    return 0

