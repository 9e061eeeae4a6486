"""The HTML report: self-contained, every model row present, and it renders in a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_stack import make_work

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:  # CI must not skip this test: `bash run.sh test` installs chromium when it can
        pytest.fail("no headless browser found (looked for " + ", ".join(BROWSERS) + "): "
                    "run `apt-get update && apt-get install -y chromium`, or `bash run.sh test`, which does")
    return found


def _chromium(*args: str) -> subprocess.CompletedProcess:
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    # run.sh preloads tcmalloc for TensorFlow; chromium has its own allocator (PartitionAlloc)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


class FakeSegResults:
    """The segmentation family's result API (list_models, read_oof_masks, read_test_masks) on fixed masks."""

    def __init__(self, oof_masks: dict, test_masks: dict):
        self.oof_masks, self.test_masks = oof_masks, test_masks

    def list_models(self, work):
        return ["unet_seg"]

    def read_oof_masks(self, work, model):
        return self.oof_masks

    def read_test_masks(self, work, model, cfg):
        return self.test_masks, None


class FakeSegEvaluate:
    @staticmethod
    def seg_table(cfg):
        import pandas as pd

        return pd.DataFrame({"n_images": [40, 40], "mean_dice": [0.61, 0.0], "pixel_recall": [0.7, 0.0],
                             "volume_mae_ml": [3.2, 9.9]}, index=pd.Index(["unet_seg", "baseline_empty"], name="model"))


def _cache_seg_outputs(w: dict) -> FakeSegResults:
    """Cached images and true masks for a few slices, and predicted masks (a disc) for them."""
    from ichkit.cache import ImageCache

    cache = ImageCache(w["work"])
    table = w["table"]
    yy, xx = np.mgrid[:64, :64]
    disc = (((yy - 30) ** 2 + (xx - 34) ** 2) < 100).astype(np.uint8)
    train = table.loc[table["split"] == "train", "image_id"].tolist()[:2]
    test = table.loc[(table["split"] == "test") & (table["status"] == "ok"), "image_id"].tolist()[:2]
    for i in train + test:
        cache.save("cls", i, np.full((32, 32, 3), 90, np.uint8))
    for i in train:
        cache.save("mask", i, np.roll(disc, 4, axis=1))
    return FakeSegResults({i: disc for i in train}, {i: disc for i in test})


def test_report_renders_in_headless_chromium_with_every_model_row(tmp_path, monkeypatch):
    from PIL import Image

    from ichkit import oof
    from ichkit.outputs import report
    from ichkit.outputs.ensemble import run_stack
    from ichkit.outputs.report import build_report

    w = make_work(tmp_path, n_patients=12, models=3, quarantine_test=1)
    run_stack(w["cfg"], progress=False)
    monkeypatch.setattr(report, "seg_results", lambda: (_cache_seg_outputs(w), FakeSegEvaluate))
    paths = build_report(w["cfg"])
    page = paths["html"].read_text()
    # self-contained: every image is embedded, nothing is fetched
    assert not re.search(r"""src=['"](?!data:)""", page) and "<link" not in page
    assert page.count("data:image/png;base64,") >= 5 + 4 * 3  # figures + 4 overlay strips of 3 images
    assert "truncated" in paths["markdown"].read_text()

    url = paths["html"].resolve().as_uri()
    shot = tmp_path / "shot.png"
    done = _chromium("--window-size=1280,2000", f"--screenshot={shot}", url)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.03  # not a blank (white) page
    # the figures were decoded and painted: the top of the page (header and table) is not the only ink
    assert (pixels[1000:] < 200).mean() > 0.01

    dom = _chromium("--dump-dom", url).stdout
    models = [*oof.list_models(w["work"]), "mean of 3 models"]
    assert "stack_lgbm" in models
    for m in models:
        assert f'data-model="{m}"' in dom, m
    assert dom.count("data-model=") == len(models)
    assert 'data-quarantined="' in dom
    assert 'data-seg-model="unet_seg"' in dom and 'data-seg-model="baseline_empty"' in dom
    assert dom.count('class="overlay"') == 4  # 2 OOF + 2 test slices
