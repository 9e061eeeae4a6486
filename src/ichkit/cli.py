"""`python -m ichkit STAGE [options]`: one entry point for every pipeline stage.

Each stage module exposes ``add_arguments(parser)`` and ``run(args, cfg) -> int``; heavy libraries are
imported inside ``run`` so that ``--help`` stays fast. Stages raise the project's errors
(`ichkit.errors.IchkitError` and its subclasses) instead of catching them; `main` is the one place that
turns them, and a missing input file, into ``ichkit STAGE: error: ...`` on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ichkit.config import load_config
from ichkit.errors import IchkitError

# stage name -> (module, one-line help). The order is the pipeline's order.
STAGES: dict[str, tuple[str, str]] = {
    "demo-data": ("ichkit.phantom.cli", "write the synthetic head-CT phantom dataset in the real RSNA/reference formats"),
    "prepare": ("ichkit.prepare", "read a dataset, DICOM -> HU -> windows -> on-disk cache + slice table"),
    "folds": ("ichkit.folds", "patient-grouped stratified k-folds -> folds/folds.csv"),
    "features": ("ichkit.features", "compute (and cache) per-image pixel and radiomic features"),
    "train": ("ichkit.train", "train a model per fold; write OOF and test predictions"),
    "segment": ("ichkit.models.seg.run", "train segmentation models per fold: OOF Dice, test masks, volumes"),
    "tune": ("ichkit.tune", "Optuna hyperparameter search on the fold-CV RSNA log loss"),
    "evaluate": ("ichkit.evaluate", "score every model's OOF predictions, best first"),
    "stack": ("ichkit.outputs.ensemble", "LightGBM stacker on the OOF files; compare with the best model and the mean; choose"),
    "submit": ("ichkit.outputs.submit", "competition CSVs (RSNA ID,Label and 7-class) + masks + JSON sidecar -> submissions/"),
    "report": ("ichkit.outputs.report", "self-contained HTML report + Markdown summary -> work/report/"),
    "predict": ("ichkit.outputs.predict", "apply a trained run's ensemble to new scans (DICOM folder, NIfTI, images)"),
    "all": ("ichkit.pipeline", "the main job: demo data if needed, prepare, folds, train, evaluate"),
}


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--config", type=Path, default=None, help="YAML file merged over the packaged default.yaml")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set folds.k=3")
    g.add_argument("--work", type=Path, default=None, help="work folder (default: paths.work = work)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ichkit",
        description="Intracranial hemorrhage classification and segmentation on head CT.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    common = _common_parser()
    usages = []
    for name, (module, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        importlib.import_module(module).add_arguments(p)
        usages.append(p.format_usage().replace("usage: ", "  ").rstrip())
    parser.epilog = "stages and their options (`ichkit STAGE --help` explains each):\n" + "\n".join(usages)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.stage:
        parser.print_help()
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if args.work is not None:
        cfg["paths"]["work"] = str(args.work)
    module = importlib.import_module(STAGES[args.stage][0])
    try:
        return int(module.run(args, cfg) or 0)
    except (IchkitError, FileNotFoundError) as exc:
        print(f"ichkit {args.stage}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
