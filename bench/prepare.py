"""Benchmark of `prepare` against the naive per-file loop of the public RSNA kernels.

    .venv/bin/python bench/prepare.py [--images 1000] [--data DIR] [--workers 0] [--repeat 3]

On the same phantom DICOMs (written with ichkit.phantom into a temp folder unless --data names an RSNA
layout folder) it times:
  (a) baseline: one process; per file dcmread -> pixel_array -> float HU -> three np.clip windows scaled
      to uint8 -> cv2.resize to 256 -> np.save (what most public kernels do);
  (b) ours: `prepare_dataset` into a fresh work folder, cls + hu caches only (seg_cache none, so it writes
      no more than the baseline plus the HU map), all cores; timed end to end (pool start, manifest, table);
  (b1) ours again with one worker: the per-core speed, whatever else the machine is running;
  (c) raw: dcmread + pixel_array and nothing else, in one process and in one process per core;
  (d) ichkit.dicom.load_dicom alone in one process (how close our decoding step stays to raw).
Prints images/s for each, ours / baseline (target >= 3x on 2 cores), and the share of the raw all-core
decode rate that ours reaches. Writes everything to bench/results/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ichkit.config import load_config  # noqa: E402
from ichkit.workers import process_pool, worker_count  # noqa: E402

RESULTS = REPO / "bench" / "results" / "prepare.json"
SLICES_PER_PATIENT = 30  # roughly what the phantom writes; only used to size the generated set


def phantom_dataset(images: int) -> Path:
    """A phantom folder (no corrupt files) with at least `images` DICOMs, written once and reused."""
    from ichkit.phantom import cached_dataset

    patients = max(2, math.ceil(images / SLICES_PER_PATIENT))
    while True:
        out = cached_dataset(patients, seed=7, corrupt=0)
        if len(list(out.glob("stage_2_*/*.dcm"))) >= images:
            return out
        patients *= 2


def pick_dataset(root: Path, images: int):
    """The dataset cut down to its first `images` slices (the ones the baseline and raw loops read too)."""
    from ichkit import readers

    ds = readers.read_dataset(root)
    slices = ds.slices.head(images).reset_index(drop=True)
    if len(slices) < images:
        raise SystemExit(f"{root} has only {len(slices)} slices, {images} asked")
    # cls + hu only, like the baseline's one image per file: no masks (and seg_cache none, see time_ours)
    slices["has_mask"] = False
    ds.slices = slices
    ds.polygons = ds.polygons.iloc[0:0]
    return ds


# ----------------------------------------------------------------------------------------- (a) baseline
WINDOWS = [(40, 80), (80, 200), (600, 2800)]


def first_value(x) -> float:
    """The public kernels' `get_first_of_dicom_field_as_int`, for multi-valued rescale tags."""
    from pydicom.multival import MultiValue

    return float(x[0]) if isinstance(x, MultiValue) else float(x)


def baseline_one(path: str, out_dir: str) -> None:
    import cv2
    import pydicom

    dcm = pydicom.dcmread(path)
    hu = dcm.pixel_array * first_value(dcm.RescaleSlope) + first_value(dcm.RescaleIntercept)
    channels = []
    for center, width in WINDOWS:
        lo, hi = center - width / 2, center + width / 2
        channels.append(((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8))
    img = cv2.resize(np.stack(channels, axis=-1), (256, 256))
    np.save(os.path.join(out_dir, os.path.basename(path)[:-4] + ".npy"), img)


def time_baseline(paths: list[str], scratch: Path) -> float:
    out_dir = scratch / "baseline"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    start = time.perf_counter()
    for p in paths:
        baseline_one(p, str(out_dir))
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- (b) ours
def time_ours(ds, scratch: Path, workers: int) -> tuple[float, dict]:
    from ichkit.prepare import prepare_dataset

    work = scratch / "work"
    shutil.rmtree(work, ignore_errors=True)
    cfg = load_config(overrides=["prepare.seg_cache=none"])
    start = time.perf_counter()
    summary = prepare_dataset(ds, work, cfg, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if summary["in_cache"] != len(ds.slices):
        raise SystemExit(f"prepare cached {summary['in_cache']} of {len(ds.slices)}: {summary['quarantined_by_reason']}")
    return seconds, summary


# ----------------------------------------------------------------------------------------------- (c) raw
def raw_chunk(paths: list[str]) -> int:
    import pydicom

    for p in paths:
        pydicom.dcmread(p).pixel_array
    return len(paths)


def time_load_dicom(paths: list[str]) -> float:
    """Our decoding step alone (ichkit.dicom.load_dicom: tags, fixes, checks), one process."""
    from ichkit.dicom import load_dicom

    start = time.perf_counter()
    for p in paths:
        load_dicom(p)
    return time.perf_counter() - start


def time_raw(paths: list[str], workers: int) -> float:
    start = time.perf_counter()
    if workers == 1:
        raw_chunk(paths)
    else:
        chunks = [paths[i::workers] for i in range(workers)]
        with process_pool(workers) as pool:  # the pool prepare itself runs on
            sum(pool.map(raw_chunk, chunks))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="DICOMs to time (default 1000)")
    parser.add_argument("--data", type=Path, default=None, help="an RSNA-layout folder (default: a phantom in the temp folder)")
    parser.add_argument("--workers", type=int, default=0, help="processes for ours and raw-per-core (0 = all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all variants; the best of each is kept")
    args = parser.parse_args(argv)
    cores = worker_count(args.workers)
    # the phantom, like RSNA, writes ID_<hex> where UIDs belong: no validation warnings, for every variant
    # alike (ours turns validation off itself; the kernels' pydicom 1.x did not validate)
    from pydicom import config as pydicom_config

    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

    root = args.data or phantom_dataset(args.images)
    ds = pick_dataset(root, args.images)
    paths = [str(Path(ds.root) / p) for p in ds.slices["path"]]
    n = len(paths)
    shape = _image_shape(paths[0])
    print(f"{n} DICOMs ({shape[0]}x{shape[1]}) from {root}; {cores} worker(s); best of {args.repeat}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ichkit-bench-") as tmp:
        scratch = Path(tmp)
        raw_chunk(paths)  # warm the page cache so every variant reads from memory alike
        # rounds of every variant in turn, so that a busy spell on a shared machine hits them all alike
        rounds = []
        for _ in range(args.repeat):
            rounds.append({
                "raw1": time_raw(paths, 1),
                "load": time_load_dicom(paths),
                "rawn": time_raw(paths, cores),
                "base": time_baseline(paths, scratch),
                "ours": time_ours(ds, scratch, cores),
                "ours1": time_ours(ds, scratch, 1)[0],
            })
        raw1, load, rawn, base, ours1 = (min(r[k] for r in rounds) for k in ("raw1", "load", "rawn", "base", "ours1"))
        ours, summary = min((r["ours"] for r in rounds), key=lambda r: r[0])

    rate = {
        "baseline_1proc": n / base,
        "ours": n / ours,
        "ours_loop_only": summary["images_per_s"],
        "ours_1worker": n / ours1,
        "load_dicom_1proc": n / load,
        "raw_dcmread_pixel_array_1proc": n / raw1,
        "raw_dcmread_pixel_array_all_cores": n / rawn,
    }
    result = {
        "images": n,
        "image_shape": list(shape),
        "data": str(root),
        "cores": cores,
        "repeat": args.repeat,
        "seconds": {"baseline": base, "ours": ours, "ours_1worker": ours1, "load_dicom_1proc": load,
                    "raw_1proc": raw1, "raw_all_cores": rawn},
        "load_dicom_share_of_raw_1proc": round(raw1 / load, 3),
        "images_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ours_over_baseline": round(rate["ours"] / rate["baseline_1proc"], 2),
        "ours_1worker_over_baseline": round(rate["ours_1worker"] / rate["baseline_1proc"], 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "ours_share_of_raw_all_cores": round(rate["ours"] / rate["raw_dcmread_pixel_array_all_cores"], 3),
        "ours_share_of_raw_1proc_x_cores": round(rate["ours"] / (rate["raw_dcmread_pixel_array_1proc"] * cores), 3),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
    }
    print(f"(a) baseline, 1 process        : {rate['baseline_1proc']:8.1f} img/s")
    print(f"(b) ours, {cores} worker(s)           : {rate['ours']:8.1f} img/s end to end "
          f"({rate['ours_loop_only']} img/s in the worker loop)")
    print(f"(b1) ours, 1 worker            : {rate['ours_1worker']:8.1f} img/s end to end "
          f"({result['ours_1worker_over_baseline']:.2f}x the baseline per core)")
    print(f"(c) raw dcmread+pixel_array    : {rate['raw_dcmread_pixel_array_1proc']:8.1f} img/s in 1 process, "
          f"{rate['raw_dcmread_pixel_array_all_cores']:.1f} img/s on {cores} core(s)")
    print(f"(d) ichkit.dicom.load_dicom    : {rate['load_dicom_1proc']:8.1f} img/s in 1 process "
          f"({result['load_dicom_share_of_raw_1proc']:.0%} of raw: decoding plus tags, fixes and checks)")
    print(f"ours / baseline                : {result['ours_over_baseline']:.2f}x (target >= 3x on 2 cores)")
    print(f"ours / raw decode, all cores   : {result['ours_share_of_raw_all_cores']:.0%} "
          f"(of 1-process raw x {cores}: {result['ours_share_of_raw_1proc_x_cores']:.0%})")
    print(f"load average (1 min) after the runs: {result['load_average_1min_after']} on {os.cpu_count()} cores "
          "(other processes on the machine lower every figure, the multi-process ones most)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


def _image_shape(path: str) -> tuple[int, int]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


if __name__ == "__main__":
    sys.exit(main())
