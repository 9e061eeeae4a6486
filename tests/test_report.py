"""The HTML report: self-contained, every model row present, and it renders in a real headless browser."""

from __future__ import annotations

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
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium_with_every_model_row(tmp_path):
    from PIL import Image

    from ichkit import oof
    from ichkit.outputs.ensemble import run_stack
    from ichkit.outputs.report import build_report

    w = make_work(tmp_path, n_patients=12, models=3, quarantine_test=1)
    run_stack(w["cfg"], progress=False)
    paths = build_report(w["cfg"])
    page = paths["html"].read_text()
    # self-contained: every image is embedded, nothing is fetched
    assert not re.search(r"""src=['"](?!data:)""", page) and "<link" not in page
    assert page.count("data:image/png;base64,") >= 5
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
