"""Stage `evaluate`: score every model's merged OOF predictions against the table labels, best first.

Reads ``<work>/oof/<model>.parquet`` for every model that has one (`oof.list_models`, any family), prints
one summary table (7-class accuracy, balanced accuracy, macro F1, RSNA log loss, macro AUC, `any`
accuracy and AUC), writes it to ``<work>/evaluation.csv`` (every score, per-class recalls included) and
``<work>/evaluation.md``, and prints the confusion matrix of the best model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# the summary table's columns, in the order the reference paper's summary reads
SUMMARY_COLUMNS: tuple[str, ...] = (
    "accuracy", "balanced_accuracy", "macro_f1", "rsna_logloss", "macro_auc", "any_accuracy", "any_auc",
)
LOWER_IS_BETTER = {"rsna_logloss"}


def evaluate_models(work: Path | str, slices: pd.DataFrame, models: list[str] | None = None,
                    sort: str = "balanced_accuracy") -> pd.DataFrame:
    """One row per model (index `model`): family, n_images and every score, best first by `sort`."""
    from ichkit import oof
    from ichkit.metrics import SCORE_KEYS
    from ichkit.models import get_model_spec

    if sort not in SCORE_KEYS:
        raise ValueError(f"cannot sort by {sort!r}; choose one of {list(SCORE_KEYS)}")
    available = oof.list_models(work)
    names = available if models is None else models
    missing = sorted(set(names) - set(available))
    if missing:
        raise oof.OOFError(f"no merged OOF file for {missing} under {Path(work) / 'oof'}: train them on every fold")
    rows = []
    for name in names:
        frame = oof.read_oof(work, name)
        try:
            family = get_model_spec(name).family
        except ValueError:  # an OOF file from a model no longer (or not yet) registered still gets scored
            family = "?"
        rows.append({"model": name, "family": family, "n_images": len(frame), **oof.score_oof(frame, slices)})
    table = pd.DataFrame(rows, columns=["model", "family", "n_images", *SCORE_KEYS]).set_index("model")
    return table.sort_values(sort, ascending=sort in LOWER_IS_BETTER, na_position="last", kind="stable")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured markdown table of `df` (index included)."""
    header = [df.index.name or ""] + [str(c) for c in df.columns]

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join([str(i)] + [cell(v) for v in row]) + " |" for i, row in zip(df.index, df.to_numpy())]
    return "\n".join(lines) + "\n"


def best_model_confusion(work: Path | str, model: str, slices: pd.DataFrame) -> pd.DataFrame:
    from ichkit import oof
    from ichkit.metrics import confusion

    frame = oof.read_oof(work, model)
    y7, _ = oof.truth_for(frame, slices)
    return confusion(y7, frame[list(oof.PROB_COLUMNS)].to_numpy())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sort", default="balanced_accuracy",
                        help="score to rank by (default balanced_accuracy; rsna_logloss ranks lowest first)")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="only these models (default: every model with a merged OOF file)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.oof import OOFError
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    try:
        slices = read_table(work).slices
        table = evaluate_models(work, slices, args.models, args.sort)
    except (OOFError, FileNotFoundError, ValueError) as exc:
        print(f"ichkit evaluate: error: {exc}", file=sys.stderr)
        return 1
    if table.empty:
        print(f"ichkit evaluate: no merged OOF files under {work / 'oof'}: run `ichkit train` first", file=sys.stderr)
        return 1
    summary = table[["family", "n_images", *SUMMARY_COLUMNS]]
    csv_path, md_path = work / "evaluation.csv", work / "evaluation.md"
    table.to_csv(csv_path, float_format="%.6f")
    md_path.write_text(f"Models ranked by {args.sort} (out-of-fold predictions)\n\n" + markdown_table(summary))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(f"out-of-fold scores, best {args.sort} first:")
        print(summary.to_string())
        best = str(table.index[0])
        print(f"\nconfusion matrix of {best} (rows: true class, columns: predicted):")
        print(best_model_confusion(work, best, slices).to_string())
    print(f"\n-> {csv_path}, {md_path}")
    from ichkit.models.seg.evaluate import print_seg_table  # the segmentation table, when seg models ran

    print_seg_table(cfg)
    return 0
