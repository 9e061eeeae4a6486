"""`ichkit demo-data`: write the synthetic head-CT phantom dataset."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("demo-data options (defaults: the `demo` config section)")
    g.add_argument("--out", type=Path, default=None, help="folder to write the dataset to (demo.out)")
    g.add_argument("--patients", type=int, default=None, help="number of patients, about 31 slices each (demo.patients)")
    g.add_argument("--seed", type=int, default=None, help="random seed; a seed always gives the same files (demo.seed)")
    g.add_argument("--test-fraction", type=float, default=None,
                   help="share of patients held out as the unlabeled test split (demo.test_fraction)")
    g.add_argument("--corrupt", type=int, default=None,
                   help="number of training files to break on purpose, for the quarantine (demo.corrupt)")
    g.add_argument("--workers", type=int, default=None, help="processes; 0 = all cores (demo.workers)")
    g.add_argument("--force", action="store_true", help="replace a dataset already in --out")


def run(args: argparse.Namespace, cfg: dict) -> int:
    from ichkit.phantom.dataset import OUTPUTS, PhantomError, generate_dataset

    demo = cfg.get("demo", {})

    def pick(flag, key):  # the flag, else the `demo` section of the config (default.yaml is the only default)
        if flag is not None:
            return flag
        if key not in demo:
            raise PhantomError(f"demo.{key} is missing from the configuration (default.yaml has it)")
        return demo[key]

    # bad requests raise PhantomError, which ichkit.cli.main reports in one line (exit code 1)
    out = Path(pick(args.out, "out"))
    params = dict(patients=int(pick(args.patients, "patients")), seed=int(pick(args.seed, "seed")),
                  test_fraction=float(pick(args.test_fraction, "test_fraction")),
                  corrupt=int(pick(args.corrupt, "corrupt")), workers=int(pick(args.workers, "workers")))
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            raise PhantomError(f"{out} is not empty; pass --force to replace the dataset in it")
        _remove_outputs(out, OUTPUTS)
    try:
        summary = generate_dataset(out, **params)
    except (FileExistsError, NotADirectoryError) as exc:  # OSError kinds of the library call, as the CLI's error
        raise PhantomError(str(exc)) from exc
    print(format_summary(out, summary))
    return 0


def _remove_outputs(out: Path, names: tuple[str, ...]) -> None:
    """Delete what a previous run wrote (only those names: other files in the folder are left alone)."""
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def format_summary(out: Path, summary: dict) -> str:
    train, test = summary["labels7"]["train"], summary["labels7"]["test"]
    lines = [
        f"phantom dataset in {out} ({summary['seconds']:.1f} s, seed {summary['seed']}, {summary['workers']} workers)",
        f"  patients  train {summary['patients']['train']:5d}   test {summary['patients']['test']:5d}",
        f"  studies   train {summary['studies']['train']:5d}   test {summary['studies']['test']:5d}",
        f"  slices    train {summary['slices']['train']:5d}   test {summary['slices']['test']:5d}",
        "  7-class   " + "  ".join(f"{name} {train[name]}/{test[name]}" for name in train) + "  (train/test)",
        f"  polygons  {summary['train_positives_with_polygons']} positive training slices outlined, "
        f"{summary['polygon_rows']['total']} rows",
        "  variants  " + ", ".join(f"{name} {v['count']}" for name, v in summary["variants"].items()),
        "  corrupt   " + (", ".join(f"{c['image_id']} ({c['kind']})" for c in summary["corrupt"]) or "none"),
    ]
    return "\n".join(lines)
