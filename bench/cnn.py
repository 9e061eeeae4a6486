"""CNN benchmark: training images/s through the whole input pipeline vs bare train_on_batch, inference, memory.

For each model and input size, in the same process and run:

- ``bare``: `train_on_batch` on pre-built in-memory batches of the same model and size (the ceiling);
- ``pipeline``: `model.fit` on `ichkit.models.cnn.inputs.CacheSequence` reading the prepared cache with
  the class-specific augmentation (loading + augmentation + fit), one timed epoch after a warm-up epoch;
- ``ratio`` = pipeline / bare (target >= 0.90: the pipeline keeps the model busy);
- ``infer``: `model.predict` images/s on the same cache without augmentation;
- ``peak_rss_mb``: the process's peak resident memory after the model's runs (ru_maxrss, cumulative).

The pipeline runs on a second, fresh build whose graphs `fit` traces, as in training. The header names the
process's malloc: run through ``bash run.sh bench cnn`` (tcmalloc preloaded); with glibc's malloc fit
spends ~40 % of the CPU faulting pages in (see `ichkit.models.cnn.compiled`).

Usage::

    python bench/cnn.py                                    # short default: cnn_baseline + resnet50_unet_cls at 128
    python bench/cnn.py --models all --sizes 128 256 --steps 20
    python bench/cnn.py --work work                         # an existing prepared work folder

Without --work a small phantom is generated and prepared once under the temp folder
(`ichkit.phantom.cached_dataset`). The same command runs unchanged on a GPU machine (the device is printed).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("cnn_baseline", "resnet50_unet_cls", "xception_unet_cls")


def _work(args: argparse.Namespace) -> Path:
    if args.work is not None:
        return Path(args.work)
    from ichkit.phantom.dataset import cached_dataset

    data = cached_dataset(patients=8, seed=7, corrupt=0)
    work = Path(tempfile.gettempdir()) / "ichkit-bench-cnn" / data.name
    if not (work / "cache" / "manifest.parquet").is_file():
        subprocess.run([sys.executable, "-m", "ichkit", "prepare", "--data", str(data), "--work", str(work),
                        "--set", "prepare.seg_cache=none"], check=True)
    return work


def _ids_and_labels(work: Path) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    from ichkit.labels import CLASS7_INDEX

    table = pd.read_parquet(work / "table.parquet")
    train = table[(table["status"] == "ok") & (table["split"] == "train")]
    return train["image_id"].astype(str).tolist(), train["label7"].map(CLASS7_INDEX).to_numpy(dtype=np.int64)


def bench_one(name: str, size: int, work: Path, steps: int, batch: int, workers: int, cfg: dict) -> dict:
    import keras

    from ichkit.labels import CLASSES7
    from ichkit.models.cnn import nets
    from ichkit.models.cnn.augment import ClassAugmenter
    from ichkit.models.cnn.inputs import CacheSequence
    from ichkit.models.cnn.trainer import rsna_weighted_bce

    ids, y7 = _ids_and_labels(work)
    n = steps * batch
    rng = np.random.default_rng(0)
    pick = rng.choice(len(ids), n, replace=len(ids) < n)
    ids_n, y_n = [ids[i] for i in pick], y7[pick]
    targets = {"class7": np.eye(len(CLASSES7), dtype=np.float32)[y_n], "rsna": np.zeros((n, 6), np.float32)}
    def compiled():
        model = nets.build(name, size)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss={"class7": "categorical_crossentropy", "rsna": rsna_weighted_bce})
        return model

    model = compiled()
    seq = CacheSequence(work, ids_n, size=size, batch_size=batch, labels7=y_n, targets=targets,
                        augmenter=ClassAugmenter.from_config(cfg, size), shuffle=True, workers=workers,
                        max_queue_size=8)
    batches = [seq[i] for i in range(min(len(seq), 4))]          # the same data, pre-built in memory
    model.train_on_batch(*batches[0])                             # trace
    t0 = time.perf_counter()
    for step in range(steps):
        model.train_on_batch(*batches[step % len(batches)])
    bare = steps * batch / (time.perf_counter() - t0)
    # a fresh model for the pipeline, its graphs traced by fit as the trainer's are (a train step traced
    # by fit first runs slower than one traced by train_on_batch, and the order sticks for the process)
    model = compiled()
    model.fit(seq, epochs=1, steps_per_epoch=2, verbose=0)        # warm-up of fit's own function
    t0 = time.perf_counter()
    model.fit(seq, epochs=1, verbose=0)
    pipeline = n / (time.perf_counter() - t0)
    plain = CacheSequence(work, ids_n, size=size, batch_size=batch * 2, workers=workers)
    model.predict(plain[0][0], verbose=0)
    t0 = time.perf_counter()
    model.predict(plain, verbose=0)
    infer = n / (time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": name, "size": size, "bare_img_s": bare, "pipeline_img_s": pipeline,
            "ratio": pipeline / bare, "infer_img_s": infer, "peak_rss_mb": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=None, help="prepared work folder (default: a small phantom)")
    parser.add_argument("--models", nargs="+", default=["cnn_baseline", "resnet50_unet_cls"],
                        help=f"models or 'all' ({', '.join(MODELS)})")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--steps", type=int, default=6, help="timed batches per measurement")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="PyDataset worker threads")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from ichkit.config import load_config
    from ichkit.models.cnn.compiled import allocator

    models = MODELS if args.models == ["all"] else tuple(args.models)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"device: {'GPU x%d (%s)' % (len(gpus), gpus[0].name) if gpus else 'CPU'}; batch {args.batch}, "
          f"{args.steps} steps, {args.workers} worker(s); malloc: {allocator()}", flush=True)
    work = _work(args)
    cfg = load_config()
    print(f"{'model':<20} {'size':>4} {'bare img/s':>10} {'pipeline':>9} {'ratio':>6} {'infer':>8} {'peak MB':>8}")
    for name in models:
        for size in args.sizes:
            r = bench_one(name, size, work, args.steps, args.batch, args.workers, cfg)
            print(f"{r['model']:<20} {r['size']:>4} {r['bare_img_s']:>10.1f} {r['pipeline_img_s']:>9.1f} "
                  f"{r['ratio']:>6.2f} {r['infer_img_s']:>8.1f} {r['peak_rss_mb']:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
