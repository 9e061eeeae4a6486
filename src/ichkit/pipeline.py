"""Stage `all`: the main job. Runs the stages in order through the same CLI a user would type.

demo data (only when the input folder holds no dataset) -> prepare -> folds -> train (every default
model, all folds) -> evaluate. Each stage skips work that is already done, so a re-run is fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset root or a folder holding one (default: paths.input); "
                             "when it holds no dataset, the phantom demo is written to demo.out")
    parser.add_argument("--models", default="all", help="models to train (comma list or 'all' = train.models)")


def _common(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    if args.config is not None:
        out += ["--config", str(args.config)]
    for o in args.overrides:
        out += ["--set", o]
    if args.work is not None:
        out += ["--work", str(args.work)]
    return out


def _find_or_make_data(args: argparse.Namespace, cfg: dict) -> tuple[Path, list[str]]:
    """The dataset to run on, and the demo-data stage call if one must be generated first."""
    from ichkit.readers import find_dataset

    if args.data is not None:
        root = find_dataset(args.data)
        if root is None:
            raise ValueError(f"--data {args.data}: no dataset found there (see the README's input layouts)")
        return root, []
    input_dir = Path(cfg["paths"]["input"])
    root = find_dataset(input_dir) if input_dir.is_dir() else None
    if root is not None:
        return root, []
    demo = Path(cfg["demo"]["out"])
    # --force: a folder without demo.json is an interrupted generation; the generator removes only its own files
    return demo, ["demo-data", "--out", str(demo), "--force"]


def run(args: argparse.Namespace, cfg: dict) -> int:
    from ichkit.cache import ImageCache
    from ichkit.cli import main as cli_main

    common = _common(args)
    try:
        root, demo_call = _find_or_make_data(args, cfg)
    except ValueError as exc:  # several datasets under the input folder: the user must pick one
        print(f"ichkit all: error: {exc}", file=sys.stderr)
        return 2
    stages: list[list[str]] = []
    if demo_call and not (root / "demo.json").is_file():
        stages.append(demo_call)
    stages += [
        ["prepare", "--data", str(root)],
        ["folds"],
        ["train", "--model", args.models],
        ["evaluate"],
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
    work = Path(cfg["paths"]["work"])
    print("\n=== done")
    for name, seconds in timings:
        print(f"  {name:<10} {seconds:7.1f} s")
    print(f"  data:        {root}")
    print(f"  table:       {work / 'table.parquet'}")
    cache = ImageCache(work)
    print(f"  cache:       {cache.root} (quarantine: {cache.quarantine_path})")
    print(f"  folds:       {cfg['paths']['folds']}")
    print(f"  OOF / test:  {work / 'oof'} / {work / 'test'}")
    print(f"  evaluation:  {work / 'evaluation.csv'}")
    return 0
