"""Benchmark of the segmentation family: U-Net throughput at the quick and paper sizes, peak memory, and
the out-of-fold Dice of every seg model and baseline on the demo.

    .venv/bin/python bench/seg.py [--profiles quick,paper] [--images 48] [--work DIR] [--no-dice]

1. Throughput, per profile size: training images/s (`fit` on random windows and masks, the profile's batch
   and loss, after one warm-up step) and inference images/s (`predict`) of `resnet50_unet_seg` (weights=None),
   each beside the same figure for a plain ResNet50 classifier (GAP head) measured in the same run at
   the same size and batch: the ratio is what the U-Net decoder costs.
2. Dice: with `--work DIR` (a prepared work folder, e.g. `work` after `bash run.sh`), every registered seg
   model (not only the default `seg.models`) is run on every fold where its outputs are missing (`ichkit segment`), and the
   segmentation table (mean / pooled Dice, pixel precision / recall, normal-slice false-positive rate,
   volume error; empty and all-brain baselines measured on the same images) is reported. Without
   `--work`, the demo phantom is prepared into a temporary folder first (bench/classical.py's cache).

Peak resident memory of this process (`resource.getrusage`). Printed and written to bench/results/seg.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ichkit.config import load_config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "seg.json"


def peak_rss_mb() -> float:
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def _classifier(size: int):
    import keras

    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    return keras.Model(base.input, keras.layers.Dense(1, activation="sigmoid")(base.output))


def throughput(profile: dict, images: int) -> dict[str, float]:
    """Training and inference images/s of the U-Net and of the ResNet50 classifier at the profile's size."""
    import keras
    import numpy as np

    from ichkit.models.seg.losses import get_loss
    from ichkit.models.seg.unet import build_resnet50_unet

    size, batch = int(profile["size"]), int(profile["batch"])
    rng = np.random.default_rng(0)
    x = rng.random((images, size, size, 3), dtype=np.float32)
    y_mask = (rng.random((images, size, size, 1)) > 0.95).astype(np.float32)
    y_cls = y_mask.max(axis=(1, 2, 3))
    out: dict[str, float] = {"size": size, "batch": batch, "images": images}
    for name, model, y, loss in (
        ("unet", build_resnet50_unet(size, decoder_filters=profile["decoder_filters"],
                                     bn_momentum=float(profile["bn_momentum"]), init_prior=profile["init_prior"]),
         y_mask, get_loss(profile["loss"])),
        ("classifier", _classifier(size), y_cls, "binary_crossentropy"),
    ):
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
        model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)     # warm-up: graph tracing
        t = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        out[f"{name}_train_img_s"] = round(images / (time.perf_counter() - t), 2)
        model.predict(x[:batch], batch_size=batch, verbose=0)
        t = time.perf_counter()
        model.predict(x, batch_size=batch, verbose=0)
        out[f"{name}_predict_img_s"] = round(images / (time.perf_counter() - t), 2)
    out["unet_vs_classifier_train"] = round(out["unet_train_img_s"] / out["classifier_train_img_s"], 3)
    out["unet_vs_classifier_predict"] = round(out["unet_predict_img_s"] / out["classifier_predict_img_s"], 3)
    return out


def dice_table(cfg: dict, work: Path | None) -> tuple[dict, float, str]:
    """Run the seg models where needed and return (table as dict, seconds, work folder used)."""
    from ichkit.models.seg.evaluate import seg_table
    from ichkit.models.seg.run import segment

    tmp = None
    if work is None:
        from ichkit import readers
        from ichkit.folds import make_folds, write_folds
        from ichkit.phantom import cached_dataset
        from ichkit.prepare import prepare_dataset
        from ichkit.table import read_table

        root = cached_dataset(int(cfg["demo"]["patients"]), int(cfg["demo"]["seed"]), float(cfg["demo"]["test_fraction"]))
        tmp = tempfile.mkdtemp(prefix="ichkit-bench-seg-")
        work = Path(tmp) / "work"
        cfg["paths"]["folds"] = str(Path(tmp) / "folds.csv")
        cfg["paths"]["work"] = str(work)
        prepare_dataset(readers.read_dataset(root), work, cfg, progress=False)
        folds = make_folds(read_table(work).slices, int(cfg["folds"]["k"]), int(cfg["folds"]["seed"]))
        write_folds(folds, Path(cfg["paths"]["folds"]), {"k": int(cfg["folds"]["k"]), "seed": int(cfg["folds"]["seed"])})
    else:
        cfg["paths"]["work"] = str(work)
    try:
        t0 = time.perf_counter()
        from ichkit.models import list_models

        segment(list_models("seg"), cfg, progress=False)  # every seg model, not only the default seg.models
        seconds = time.perf_counter() - t0
        table = seg_table(cfg)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {m: {k: round(float(v), 4) for k, v in row.items()} for m, row in table.iterrows()}, seconds, str(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="quick,paper", help="seg profiles to time (comma list)")
    parser.add_argument("--images", type=int, default=48, help="images per timed fit / predict")
    parser.add_argument("--work", type=Path, default=None, help="a prepared work folder for the Dice part")
    parser.add_argument("--no-dice", action="store_true", help="only the throughput part")
    args = parser.parse_args(argv)

    cfg = load_config()
    speed = {}
    for name in args.profiles.split(","):
        speed[name] = throughput(cfg["seg"]["profiles"][name], args.images)
        s = speed[name]
        print(f"{name:<6} {s['size']:>4} px batch {s['batch']:>2}: U-Net train {s['unet_train_img_s']:.2f} img/s "
              f"(x{s['unet_vs_classifier_train']:.2f} of the ResNet50 classifier's {s['classifier_train_img_s']:.2f}), "
              f"predict {s['unet_predict_img_s']:.2f} img/s (x{s['unet_vs_classifier_predict']:.2f} of "
              f"{s['classifier_predict_img_s']:.2f})", flush=True)
    result: dict = {"throughput": speed}
    if not args.no_dice:
        table, seconds, work = dice_table(cfg, args.work)
        result.update(dice=table, segment_seconds=round(seconds, 1), work=work)
        print(f"\nsegment ({', '.join(cfg['seg']['models'])}, missing folds only): {seconds:.1f} s; OOF table:")
        cols = ("mean_dice", "pooled_dice", "pixel_precision", "pixel_recall", "normal_fp_rate", "volume_mae_ml")
        print(f"{'model':<20}" + "".join(f"{c:>16}" for c in cols))
        for m, row in table.items():
            print(f"{m:<20}" + "".join(f"{row[c]:>16.3f}" for c in cols))
    result["peak_rss_mb"] = peak_rss_mb()
    result["machine"] = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "load_avg_1m": round(os.getloadavg()[0], 2)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak memory (RSS): {result['peak_rss_mb']:.0f} MB; load average {result['machine']['load_avg_1m']} "
          f"on {os.cpu_count()} cores (a shared machine: timings are noisy)\n-> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
