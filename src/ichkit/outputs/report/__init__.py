"""Stage `report`: one self-contained HTML page (every image embedded) and a Markdown summary of a run.

``ichkit report [--out DIR]`` (default ``<work>/report/``) writes ``report.html`` and ``report.md`` from the
files earlier stages left in the work folder, whatever families made them:

- the model table like the reference paper's summary: 7-class accuracy, balanced accuracy, binary (any)
  accuracy, RSNA log loss, AUC for every model with a merged OOF file (`evaluate.evaluate_models`), plus the
  plain mean and the stacker; segmentation Dice, precision, recall and volume error where segmentation
  OOF files exist (``<work>/seg_oof/<model>.parquet``);
- confusion matrices (images) of the best models, ROC curves of the binary any-hemorrhage task, per-class
  recall bars;
- the stacker's gain: the three ensemble candidates of ``stack/ensemble.json`` and which one the
  submission uses;
- segmentation overlays (image, true mask, predicted mask) for OOF and test slices when a segmentation
  model saved its masks (`ichkit.models.seg.results`);
- the quarantine summary (reasons and the files) from ``cache/quarantine.csv``.
"""

from __future__ import annotations

import argparse
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.files import write_text_atomic

# the model table's columns: (score key, heading), in the order of the paper's summary table
MODEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("accuracy", "7-class accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
    ("any_accuracy", "binary accuracy"), ("rsna_logloss", "RSNA log loss"), ("macro_auc", "AUC (7-class)"),
    ("any_auc", "AUC (any)"),
)
# the segmentation family's table (ichkit.models.seg.evaluate.seg_table): its column -> heading
SEG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_blood", "slices with blood"), ("mean_dice", "Dice"), ("mean_iou", "IoU"), ("pixel_precision", "precision"),
    ("pixel_recall", "recall"), ("normal_fp_rate", "FP rate on normal slices"),
    ("volume_mae_ml", "volume error (mL, MAE)"), ("volume_corr", "volume correlation"),
)


def model_table(work: Path, slices: pd.DataFrame, ensemble: dict[str, Any] | None) -> pd.DataFrame:
    """Every model's OOF scores (index model; family column), plus the plain mean when stacked."""
    from ichkit.evaluate import evaluate_models

    table = evaluate_models(work, slices, sort=ensemble["select_by"] if ensemble else "balanced_accuracy")
    if ensemble is not None:
        mean = pd.DataFrame([{"model": f"mean of {len(ensemble['first_level'])} models", "family": "blend",
                              "n_images": table["n_images"].max(), **ensemble["candidates"]["mean"]}]).set_index("model")
        table = pd.concat([table, mean[[c for c in table.columns if c in mean.columns]]])
        lower = ensemble["select_by"] == "rsna_logloss"
        table = table.sort_values(ensemble["select_by"], ascending=lower, kind="stable")
    return table


def seg_results():
    """The segmentation family's result modules (results, evaluate), or None where it is not installed."""
    import importlib.util

    if importlib.util.find_spec("ichkit.models.seg") is None or importlib.util.find_spec("ichkit.models.seg.results") is None:
        return None
    from ichkit.models.seg import evaluate, results

    return results, evaluate


def seg_table(cfg: dict[str, Any]) -> pd.DataFrame:
    """The segmentation family's OOF table (models and baselines), empty when there is none."""
    found = seg_results()
    if found is None or not found[0].list_models(Path(cfg["paths"]["work"])):
        return pd.DataFrame()
    return found[1].seg_table(cfg)


def roc_curves(work: Path, slices: pd.DataFrame, models: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    from sklearn.metrics import roc_auc_score, roc_curve

    from ichkit import oof

    curves = {}
    for m in models:
        frame = oof.read_oof(work, m)
        _, y6 = oof.truth_for(frame, slices)
        y, p = y6[:, 0], frame["rsna_any"].to_numpy()
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        curves[m] = (fpr, tpr, float(roc_auc_score(y, p)))
    return curves


def seg_overlays(cfg: dict[str, Any], n: int, results=None) -> list[dict[str, Any]]:
    """Overlays (image, true mask, predicted mask) of up to `n` OOF slices (those with a true mask first)
    and `n` positive test slices of each segmentation model; [] without segmentation outputs. `results`
    is the family's results module (`ichkit.models.seg.results`: list_models, read_oof_masks,
    read_test_masks)."""
    from ichkit.cache import ImageCache
    from ichkit.outputs.report.figures import overlay_strip

    if results is None:
        found = seg_results()
        if found is None:
            return []
        results = found[0]
    work = Path(cfg["paths"]["work"])
    cache = ImageCache(work)
    picked: list[tuple[str, str, str, np.ndarray]] = []
    for model in results.list_models(work):
        oof_masks = results.read_oof_masks(work, model)
        with_truth = sorted(i for i in oof_masks if cache.has("mask", i))
        others = sorted(i for i in oof_masks if i not in set(with_truth))
        picked += [("OOF", model, i, oof_masks[i]) for i in (with_truth + others)[:n]]
        try:
            test_masks, _ = results.read_test_masks(work, model, cfg)
        except (FileNotFoundError, ValueError):  # no test predictions of this model (yet)
            test_masks = {}
        picked += [("test", model, i, m) for i, m in sorted(test_masks.items()) if m.any()][:n]
    out = []
    for split, model, image_id, predicted in picked:
        kind = "seg" if cache.has("seg", image_id) else "cls"
        image = cache.load(kind, image_id)
        truth = cache.load("mask", image_id) if cache.has("mask", image_id) else None
        out.append({"split": split, "model": model, "image_id": image_id, "strip": overlay_strip(image, truth, predicted)})
    return out


def quarantine_summary(work: Path) -> pd.DataFrame:
    from ichkit.cache import ImageCache

    path = ImageCache(work).quarantine_path
    if not path.is_file():
        return pd.DataFrame(columns=["image_id", "path", "reason", "detail"])
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# ------------------------------------------------------------------------------------------------ HTML
def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "&ndash;" if np.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def _table_html(df: pd.DataFrame, columns: tuple[tuple[str, str], ...], row_attr: str, best: str | None = None,
                extra: tuple[str, ...] = ("family", "n_images")) -> str:
    cols = [(k, h) for k, h in columns if k in df.columns]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("model", *extra, *(h for _, h in cols)))
    rows = []
    for name, row in df.iterrows():
        cls = ' class="winner"' if best is not None and name == best else ""
        cells = "".join(f"<td>{_fmt(row.get(k, ''))}</td>" for k in extra) + "".join(
            f"<td>{_fmt(row[k])}</td>" for k, _ in cols)
        rows.append(f'<tr {row_attr}="{html.escape(str(name))}"{cls}><th>{html.escape(str(name))}</th>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1d232a; background: #ffffff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 30px; border-bottom: 2px solid #e3e7ec; }
.lead { color: #4a5561; } .card { display: inline-block; padding: 10px 16px; margin: 6px 8px 6px 0;
       border-radius: 8px; background: #f1f4f8; } .card b { display: block; font-size: 20px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 4px 9px; border-bottom: 1px solid #e3e7ec; text-align: right; }
tbody th, thead th:first-child { text-align: left; } thead th { background: #f1f4f8; }
tr.winner { background: #fff3e0; font-weight: 600; }
.figs img { margin: 6px; vertical-align: top; border: 1px solid #e3e7ec; border-radius: 4px; }
.overlay img { width: 160px; height: 160px; image-rendering: pixelated; margin: 2px; }
.note { color: #6b7682; font-size: 12px; }
"""


def render_html(ctx: dict[str, Any]) -> str:
    e = ctx["ensemble"]
    cards = "".join(f'<div class="card"><b>{html.escape(str(v))}</b>{html.escape(k)}</div>'
                    for k, v in ctx["cards"].items())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ichkit report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>ichkit run report</h1>",
             f"<p class='lead'>{html.escape(ctx['subtitle'])}</p>", f"<div>{cards}</div>",
             "<h2 id='models'>Models (out-of-fold, patient-grouped folds)</h2>",
             _table_html(ctx["models"], MODEL_COLUMNS, "data-model", best=ctx.get("winner_row")),
             f"<p class='note'>Ranked by {html.escape(ctx['sort'])}. The highlighted row is what the submission uses."
             " Binary accuracy: p(any) &ge; 0.5.</p>"]
    if not ctx["seg"].empty:
        parts += ["<h2 id='segmentation'>Segmentation (out-of-fold)</h2>",
                  _table_html(ctx["seg"], SEG_COLUMNS, "data-seg-model", extra=("n_images",)),
                  "<p class='note'>Dice / IoU: mean over slices with blood; precision / recall: pixels; "
                  "baselines (empty, whole brain) on the same images.</p>"]
    if e is not None:
        gain = "; ".join(f"{k.replace('_', ' ')}: {v:+.4f}" for k, v in e["gain"].items()) or "no stacker fitted"
        parts += ["<h2 id='stacking'>Stacking: which ensemble won</h2>",
                  f"<p>The submission uses <b>{html.escape(e['winner'])}</b> ({html.escape(e['model'])}). "
                  f"Gain of the stacker ({html.escape(e['select_by'])}, &gt; 0 = better): {html.escape(gain)}.</p>",
                  f"<div class='figs'><img alt='ensemble candidates' src='{ctx['gain_fig']}'></div>"]
    parts += ["<h2 id='confusion'>Confusion matrices (rows: true class)</h2><div class='figs'>",
              *(f"<img alt='confusion matrix {html.escape(m)}' src='{uri}'>" for m, uri in ctx["confusions"].items()),
              "</div>",
              "<h2 id='roc'>Binary task (any hemorrhage) ROC curves, and per-class recall</h2>",
              f"<div class='figs'><img alt='ROC curves' src='{ctx['roc_fig']}'>",
              f"<img alt='per-class recall' src='{ctx['recall_fig']}'></div>"]
    if ctx["overlays"]:
        parts.append("<h2 id='overlays'>Segmentation overlays (image, true mask, predicted mask)</h2>")
        for o in ctx["overlays"]:
            imgs = "".join(f"<img alt='{html.escape(o['image_id'])}' src='{u}'>" for u in o["strip"])
            parts.append(f"<div class='overlay'><div class='note'>{html.escape(str(o.get('split', '')))} "
                         f"{html.escape(o['image_id'])} ({html.escape(str(o.get('model', '')))})</div>{imgs}</div>")
    q = ctx["quarantine"]
    parts.append("<h2 id='quarantine'>Quarantine</h2>")
    if q.empty:
        parts.append("<p>No input was quarantined.</p>")
    else:
        counts = q["reason"].value_counts()
        parts.append("<p>" + ", ".join(f"{html.escape(r)}: {n}" for r, n in counts.items()) +
                     f" ({len(q)} inputs; never dropped: test images among them got the submission's fallback)</p>")
        rows = "".join(f"<tr data-quarantined='{html.escape(r.image_id)}'><th>{html.escape(r.image_id)}</th>"
                       f"<td>{html.escape(r.reason)}</td><td style='text-align:left'>{html.escape(r.detail)}</td></tr>"
                       for r in q.head(50).itertuples())
        parts.append(f"<table><thead><tr><th>image</th><th>reason</th><th>detail</th></tr></thead><tbody>{rows}</tbody></table>")
    parts.append(f"<p class='note'>Written {html.escape(ctx['created'])} from {html.escape(str(ctx['work']))}.</p></body></html>")
    return "\n".join(parts)


def render_markdown(ctx: dict[str, Any]) -> str:
    from ichkit.evaluate import markdown_table

    cols = [k for k, _ in MODEL_COLUMNS if k in ctx["models"].columns]
    lines = ["# ichkit run report", "", ctx["subtitle"], ""]
    lines += [f"- {k}: {v}" for k, v in ctx["cards"].items()]
    lines += ["", f"## Models (out-of-fold, ranked by {ctx['sort']})", "",
              markdown_table(ctx["models"][["family", *cols]])]
    if not ctx["seg"].empty:
        lines += ["## Segmentation (out-of-fold)", "", markdown_table(ctx["seg"])]
    e = ctx["ensemble"]
    if e is not None:
        lines += ["## Stacking", "", f"Submission uses **{e['winner']}** ({e['model']}).", ""]
        lines += [f"- {c}: {e['select_by']} {s[e['select_by']]:.4f}" for c, s in e["candidates"].items()]
        lines += [f"- gain {k.replace('_', ' ')}: {v:+.4f}" for k, v in e["gain"].items()] + [""]
    q = ctx["quarantine"]
    lines += ["## Quarantine", "", (", ".join(f"{r}: {n}" for r, n in q["reason"].value_counts().items())
                                    if not q.empty else "none"), ""]
    return "\n".join(lines)


def inputs_digest(work: Path) -> str:
    """Hash of the files a report is made from: the same digest means the same report."""
    import hashlib

    from ichkit.cache import ImageCache

    files = [*sorted((work / "oof").glob("*.parquet")), *sorted((work / "seg_oof").glob("*.parquet")),
             *sorted((work / "seg_test").glob("*/fold*.parquet")),
             work / "stack" / "ensemble.json", ImageCache(work).quarantine_path, work / "table.parquet"]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p).encode() + (p.read_bytes() if p.is_file() else b"-"))
    return h.hexdigest()


def build_report(cfg: dict[str, Any], out_dir: Path | None = None) -> dict[str, Path]:
    from ichkit import oof
    from ichkit.metrics import confusion
    from ichkit.outputs.ensemble import ensemble_path, read_ensemble
    from ichkit.outputs.report import figures
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    out_dir = Path(out_dir or work / "report")
    ds = read_table(work)
    slices = ds.slices
    ensemble = read_ensemble(work) if ensemble_path(work).is_file() else None
    models = model_table(work, slices, ensemble)
    if models.empty:
        raise oof.OOFError(f"no merged OOF files under {work / 'oof'}: run `ichkit train` first")
    trained = [m for m in models.index if m in set(oof.list_models(work))]
    top = trained[: int(cfg["report"]["top_confusions"])]
    winner_row = None
    if ensemble is not None:
        winner_row = {"mean": f"mean of {len(ensemble['first_level'])} models"}.get(ensemble["winner"], ensemble["model"])
        if ensemble["model"] in trained and ensemble["model"] not in top:
            top = [ensemble["model"], *top[:-1]]
    confusions = {}
    for m in top:
        frame = oof.read_oof(work, m)
        y7, _ = oof.truth_for(frame, slices)
        confusions[m] = figures.confusion_figure(confusion(y7, frame[list(oof.PROB_COLUMNS)].to_numpy()), m)
    recall_cols = [c for c in models.columns if c.startswith("recall_")]
    recalls = models.loc[top, recall_cols].set_axis([c.removeprefix("recall_") for c in recall_cols], axis=1)
    train = slices[slices["split"] == "train"]
    q = quarantine_summary(work)
    ctx = {
        "work": work, "ensemble": ensemble, "models": models, "seg": seg_table(cfg), "winner_row": winner_row,
        "sort": ensemble["select_by"] if ensemble else "balanced_accuracy",
        "subtitle": f"dataset {ds.root} ({ds.layout}); {len(trained)} trained models",
        "cards": {"training images": int((train["status"] == "ok").sum()),
                  "patients": int(train["patient_id"].nunique()),
                  "test images": int((slices["split"] == "test").sum()),
                  "quarantined": len(q),
                  "submission uses": ensemble["model"] if ensemble else "(run ichkit stack)"},
        "confusions": confusions,
        "roc_fig": figures.roc_figure(roc_curves(work, slices, top)),
        "recall_fig": figures.recall_figure(recalls),
        "gain_fig": figures.gain_figure({c: s[ensemble["select_by"]] for c, s in ensemble["candidates"].items()},
                                        ensemble["select_by"], ensemble["winner"]) if ensemble else "",
        "overlays": seg_overlays(cfg, int(cfg["report"]["overlays"])),
        "quarantine": q,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    paths = {"html": out_dir / "report.html", "markdown": out_dir / "report.md"}
    write_text_atomic(paths["html"], render_html(ctx))
    write_text_atomic(paths["markdown"], render_markdown(ctx))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <work>/report)")
    parser.add_argument("--force", action="store_true", help="rebuild even if no input changed")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    work = Path(cfg["paths"]["work"])
    out_dir = Path(args.out or work / "report")
    digest_path, digest = out_dir / "inputs.sha256", inputs_digest(work)
    if (out_dir / "report.html").is_file() and digest_path.is_file() and not args.force \
            and digest_path.read_text().strip() == digest:
        print(f"report: {out_dir / 'report.html'} is up to date (--force to rebuild)")
        return 0
    paths = build_report(cfg, out_dir)
    write_text_atomic(digest_path, digest + "\n")
    for name, path in paths.items():
        print(f"report: wrote {name}: {path}")
    return 0
