"""The report's figures, drawn with matplotlib (Agg) and returned as base64 PNG data URIs, so the HTML page
embeds every image and stays one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ichkit.labels import CLASSES7

SHORT = {"epidural": "EDH", "subdural": "SDH", "subarachnoid": "SAH", "intraparenchymal": "IPH",
         "intraventricular": "IVH", "multi": "multi", "normal": "normal"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_data_uri(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 image (H, W) or (H, W, 3) as a PNG data URI (no matplotlib: pixels as they are)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def confusion_figure(matrix: pd.DataFrame, title: str) -> str:
    """Row-normalised 7x7 confusion matrix with the counts written in the cells."""
    plt = _plt()
    counts = matrix.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, counts / totals, np.nan)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
    labels = [SHORT.get(c, c) for c in matrix.columns]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_title(title, fontsize=9)
    return to_data_uri(fig)


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> str:
    """ROC curves of the binary any-hemorrhage task: name -> (fpr, tpr, auc)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("any hemorrhage: ROC (out-of-fold)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return to_data_uri(fig)


def recall_figure(recalls: pd.DataFrame) -> str:
    """Grouped bars of per-class recall: rows = models, columns = recall_<class>."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    n = len(recalls)
    width = 0.8 / max(n, 1)
    x = np.arange(len(CLASSES7))
    for i, (name, row) in enumerate(recalls.iterrows()):
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(row.to_numpy(dtype=float)), width, label=name)
    ax.set_xticks(x, [SHORT[c] for c in CLASSES7])
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.set_title("per-class recall (out-of-fold)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return to_data_uri(fig)


def gain_figure(candidates: Mapping[str, float], metric: str, winner: str) -> str:
    """Bars of the ensemble candidates' OOF score, the winner highlighted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 2.6))
    names = list(candidates)
    values = [candidates[n] for n in names]
    colours = ["#d95f02" if n == winner else "#7570b3" for n in names]
    ax.barh(names, values, color=colours)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.4f}", va="center", fontsize=8)
    ax.set_xlabel(f"{metric} (out-of-fold)")
    ax.invert_yaxis()
    ax.set_title(f"ensemble candidates (used: {winner})", fontsize=9)
    return to_data_uri(fig)


def overlay_strip(image: np.ndarray, truth: np.ndarray | None, predicted: np.ndarray | None) -> list[str]:
    """[image, image + true mask, image + predicted mask] as PNG data URIs (masks in red)."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    rgb = rgb[..., :3].astype(np.uint8)

    def tint(mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            return rgb
        out = rgb.astype(np.float32).copy()
        m = mask.astype(bool)
        if m.shape != rgb.shape[:2]:
            from PIL import Image

            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(rgb.shape[1::-1], Image.NEAREST)) > 0
        out[m] = 0.45 * out[m] + 0.55 * np.array([255.0, 0.0, 0.0])
        return out.astype(np.uint8)

    return [png_data_uri(rgb), png_data_uri(tint(truth)), png_data_uri(tint(predicted))]

