"""Stage `evaluate`: score every model's merged OOF predictions against the table labels, best first.

Reads ``<work>/oof/<run>.parquet`` for every run that has one (`oof.list_models`, any family and task),
prints one summary table grouped by task (7class, 6class, binary; best first inside each: 7-class
accuracy, balanced accuracy, macro F1, RSNA log loss, macro AUC, `any` accuracy and AUC; a binary model's
7-class scores are empty), writes it to ``<work>/evaluation.csv`` (every score, per-class recalls
included) and ``<work>/evaluation.md``, and prints the confusion matrix of the best 7-class model.

A merged OOF made with other folds than the current folds.csv (`oof.check_current`) is refused with an
error naming it: scoring it would compare models on different splits.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.errors import IchkitError

# the summary table's columns, in the order the reference paper's summary reads
SUMMARY_COLUMNS: tuple[str, ...] = (
    "accuracy", "balanced_accuracy", "macro_f1", "rsna_logloss", "macro_auc", "any_accuracy", "any_auc",
)
LOWER_IS_BETTER = {"rsna_logloss"}


class EvaluateError(IchkitError):
    """An evaluation request that cannot run."""


def evaluate_models(work: Path | str, slices: pd.DataFrame, models: list[str] | None = None,
                    sort: str = "balanced_accuracy", folds_file: Path | str | None = None) -> pd.DataFrame:
    """One row per run (index `model`): task, family, n_images and every score; grouped by task (TASKS
    order), best first by `sort` inside each. With `folds_file`, a run made with other folds is refused."""
    from ichkit import oof
    from ichkit.engine.driver import task_scores
    from ichkit.engine.tasks import TASKS, split_run_name
    from ichkit.metrics import SCORE_KEYS
    from ichkit.models import get_model_spec

    if sort not in SCORE_KEYS:
        raise EvaluateError(f"cannot sort by {sort!r}; choose one of {list(SCORE_KEYS)}")
    available = oof.list_models(work)
    names = available if models is None else models
    missing = sorted(set(names) - set(available))
    if missing:
        raise oof.OOFError(f"no merged OOF file for {missing} under {Path(work) / 'oof'}: train them on every fold")
    if folds_file is not None:
        stale = []
        for name in names:
            try:
                oof.check_current(work, name, folds_file)
            except oof.OOFError:
                stale.append(name)
        if stale:
            raise oof.OOFError(f"merged OOF of {stale} made with other folds than the current {folds_file}: "
                               "stale; retrain them (`ichkit train --model NAME`), or pick others with --models")
    rows = []
    for name in names:
        frame = oof.read_oof(work, name)
        model, task = split_run_name(name)
        try:
            family = get_model_spec(model).family
        except ValueError:  # an OOF file from a model no longer (or not yet) registered still gets scored
            family = "?"
        y7, y6 = oof.truth_for(frame, slices)
        scores = task_scores(task, y7, frame[list(oof.PROB_COLUMNS)].to_numpy(), y6, frame[list(oof.RSNA_COLUMNS)].to_numpy())
        rows.append({"model": name, "task": task, "family": family, "n_images": len(frame), **scores})
    table = pd.DataFrame(rows, columns=["model", "task", "family", "n_images", *SCORE_KEYS]).set_index("model")
    table = table.sort_values(sort, ascending=sort in LOWER_IS_BETTER, na_position="last", kind="stable")
    order = {t: i for i, t in enumerate(TASKS)}
    return table.iloc[np.argsort(table["task"].map(order).to_numpy(), kind="stable")]


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
    from ichkit.folds import folds_path
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    slices = read_table(work).slices
    table = evaluate_models(work, slices, args.models, args.sort, folds_file=folds_path(cfg))
    if table.empty:
        raise EvaluateError(f"no merged OOF files under {work / 'oof'}: run `ichkit train` first")
    summary = table[["task", "family", "n_images", *SUMMARY_COLUMNS]]
    csv_path, md_path = work / "evaluation.csv", work / "evaluation.md"
    table.to_csv(csv_path, float_format="%.6f")
    md_path.write_text(f"Models by task, ranked by {args.sort} (out-of-fold predictions)\n\n" + markdown_table(summary))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(f"out-of-fold scores by task, best {args.sort} first:")
        print(summary.to_string())
        classifiers = table[table["task"] != "binary"]
        if len(classifiers):
            best = str(classifiers.index[0])
            print(f"\nconfusion matrix of {best} (rows: true class, columns: predicted):")
            print(best_model_confusion(work, best, slices).to_string())
    print(f"\n-> {csv_path}, {md_path}")
    from ichkit.models.seg.evaluate import print_seg_table  # the segmentation table, when seg models ran

    print_seg_table(cfg)
    return 0
