"""Realism of the phantom: measure a phantom dataset from its files and print each target of real
non-contrast head CT next to the measured figure, with pass/fail.

    .venv/bin/python bench/phantom_realism.py [--data DIR | --patients N --seed S] [--negatives N] [--json FILE]

Without --data the default demo (`demo.patients`, `demo.seed` of default.yaml) is written once into the
temp folder and reused. Everything is measured the way anyone could measure real scans: the DICOM files
(HU through the project's reader), the label CSVs and the polygon outlines (train and `_truth/` test);
only the hard-negative counts and the pose come from `_truth/slices.csv` / `_truth/acquisitions.csv`,
since a blood mimic is by definition not labelled in the files. The brain mask is the radiomic features'
own (`ichkit.features.head_masks`, made at `prepare.cls_size` as the features make it). Exit code 1 if any line fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ichkit.config import load_config  # noqa: E402
from ichkit.dicom import load_dicom  # noqa: E402
from ichkit.features import FeatureSettings, blood_candidates, head_masks  # noqa: E402
from ichkit.labels import SUBTYPES, read_rsna_long_labels  # noqa: E402
from ichkit.readers.polygons import polygons_by_image, read_polygon_csv, rasterize  # noqa: E402

SIZE = 512


@dataclass
class Line:
    name: str
    target: str
    measured: str
    ok: bool


def _pct(values, qs=(5, 50, 95)) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    return [float(np.percentile(values, q)) for q in qs] if values.size else [float("nan")] * len(qs)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _ground_truth(root: Path) -> tuple[pd.DataFrame, dict[str, list[np.ndarray]], dict[str, Path]]:
    """Labels (train + `_truth` test, indexed by image id), polygon outlines by image, DICOM path by image."""
    labels = pd.concat([read_rsna_long_labels(root / "stage_2_train.csv"),
                        read_rsna_long_labels(root / "_truth" / "stage_2_test_labels.csv")]).set_index("image_id")
    polygons: dict[str, list[np.ndarray]] = {}
    for p in (root / "Results_demo.csv", root / "_truth" / "Results_test.csv"):
        polygons.update(polygons_by_image(read_polygon_csv(p)))
    paths = {p.stem: p for folder in ("stage_2_train", "stage_2_test") for p in (root / folder).glob("*.dcm")}
    return labels, polygons, paths


def measure(root: Path, negatives: int, seed: int = 0) -> dict:
    """Every figure the report prints, from the files of the dataset at `root`."""
    from scipy import ndimage as ndi

    summary = json.loads((root / "demo.json").read_text())
    corrupt = {c["image_id"] for c in summary["corrupt"]}
    labels, polygons, paths = _ground_truth(root)
    paths = {k: v for k, v in paths.items() if k not in corrupt}
    truth_slices = {r["image_id"]: r for r in _read_csv(root / "_truth" / "slices.csv")}
    acquisitions = _read_csv(root / "_truth" / "acquisitions.csv")
    import cv2

    cfg = load_config()
    settings = FeatureSettings.from_config(cfg)
    settings_size = int(cfg["prepare"]["cls_size"])

    positive = [i for i in paths if i in labels.index and labels.loc[i, "any"] == 1]
    negative = [i for i in paths if i in labels.index and labels.loc[i, "any"] == 0]
    rng = np.random.default_rng(seed)
    negative_sample = sorted(rng.choice(negative, size=min(negatives, len(negative)), replace=False).tolist())

    m: dict = defaultdict(list)
    disk2 = ndi.generate_binary_structure(2, 1)
    for image_id in positive + negative_sample:
        sl = load_dicom(paths[image_id])
        hu = sl.hu()
        if hu.shape != (SIZE, SIZE):
            continue
        # the features' own brain mask, made where they make it (the cls_size HU map), brought back to 512
        small = cv2.resize(hu, (settings_size, settings_size), interpolation=cv2.INTER_AREA)
        brain_small = head_masks(small, settings).brain
        brain = cv2.resize(brain_small.astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST).astype(bool)
        lab = labels.loc[image_id]
        bleed = rasterize(polygons[image_id], SIZE, SIZE).astype(bool) if image_id in polygons else np.zeros_like(brain)
        parenchyma = brain & ~ndi.binary_dilation(bleed, iterations=3) & (hu > 15) & (hu < 100)
        if parenchyma.sum() > 2000:
            m["brain_median"].append(float(np.median(hu[parenchyma])))
            # noise: local std in 7x7 windows; flat parenchyma is the quietest quarter of them
            mean = ndi.uniform_filter(hu, 7)
            local = np.sqrt(np.maximum(ndi.uniform_filter(hu * hu, 7) - mean * mean, 0.0))
            inner = ndi.binary_erosion(parenchyma, iterations=4)
            if inner.sum() > 500:
                flat = inner & (local <= np.percentile(local[inner], 25))
                m["noise_std"].append(float(np.median(local[inner & (local <= np.percentile(local[inner], 50))])))
                resid = hu - ndi.gaussian_filter(hu, 3.0)
                pair = flat[:, :-1] & flat[:, 1:]
                if pair.sum() > 200:
                    a, b = resid[:, :-1][pair], resid[:, 1:][pair]
                    m["noise_corr"].append(float(np.corrcoef(a, b)[0, 1]))
        if lab["any"] == 0:
            # what the radiomic features would count as blood on this normal slice
            m["negative_candidates"].append(bool(blood_candidates(small, brain_small, settings).any()))
            continue
        if bleed.sum() == 0:
            continue
        values = hu[bleed]
        m["blood_px_above_100"].append((int((values > 100).sum()), int(values.size)))
        m["blood_values"].append(values[values <= 100][:: max(1, values.size // 400)])
        pieces, n = ndi.label(bleed, structure=np.ones((3, 3), dtype=bool))
        m["pieces"].append(n)
        areas = np.bincount(pieces.ravel())[1:]
        m["piece_area"] += areas.tolist()
        m["slice_area"].append(int(bleed.sum()))
        present = [s for s in SUBTYPES if lab[s] == 1]
        m["mixed"].append(len(present) >= 2)
        if len(present) == 1:
            ring = ndi.binary_dilation(bleed, iterations=8) & ~ndi.binary_dilation(bleed, iterations=3) & brain
            ring &= (hu > 15) & (hu < 100)
            if ring.sum() > 50 and values.size >= 20:
                blood_med = float(np.median(values[values <= 100]))
                m[f"blood_{present[0]}"].append(blood_med)
                m[f"contrast_{present[0]}"].append(blood_med - float(np.median(hu[ring])))

    thickness = [float(a["slice_thickness_mm"]) for a in acquisitions]
    spacing = [float(a["pixel_spacing_mm"]) for a in acquisitions]
    yaw = [abs(float(a["yaw_deg"])) for a in acquisitions]
    hard = {k: sum(1 for r in truth_slices.values() if int(r[k]) > 0)
            for k in ("calcification", "venous_sinus", "falx_tentorium", "scalp_haematoma", "streaks")}
    for k in ("transposed", "fov_cut", "motion", "craniotomy"):
        hard[k] = sum(int(a[k]) for a in acquisitions)
    above, total = np.sum(m["blood_px_above_100"], axis=0) if m["blood_px_above_100"] else (0, 1)
    blood = np.concatenate(m["blood_values"]) if m["blood_values"] else np.zeros(0)
    return {
        "slices": {"measured_positive": len(positive), "measured_negative": len(negative_sample)},
        "brain_median": _pct(m["brain_median"]),
        "blood_hu": _pct(blood),
        "blood_share_40_80": float(((blood >= 40) & (blood <= 80)).mean()) if blood.size else 0.0,
        "per_subtype": {s: {"n": len(m[f"blood_{s}"]), "blood": _pct(m[f"blood_{s}"], (25, 50, 75)),
                            "contrast": _pct(m[f"contrast_{s}"], (25, 50, 75))} for s in SUBTYPES},
        "contrast_all": _pct([c for s in SUBTYPES for c in m[f"contrast_{s}"]], (25, 50, 75)),
        "noise_std": _pct(m["noise_std"]),
        "noise_corr": _pct(m["noise_corr"]),
        "pieces": {"share_1_5": float(np.mean([(1 <= n <= 5) for n in m["pieces"]])) if m["pieces"] else 0.0,
                   "share_2plus": float(np.mean([n >= 2 for n in m["pieces"]])) if m["pieces"] else 0.0,
                   "max": int(max(m["pieces"], default=0))},
        "piece_area_p5": _pct(m["piece_area"], (5,))[0], "slice_area_max": int(max(m["slice_area"], default=0)),
        "mixed_share": float(np.mean(m["mixed"])) if m["mixed"] else 0.0,
        "bleed_px_above_100": float(above / max(total, 1)),
        "thickness": {"min": min(thickness), "max": max(thickness), "thin_studies": sum(t <= 1.25 for t in thickness),
                      "studies": len(thickness), "values": sorted(set(thickness))},
        "pixel_spacing": [min(spacing), max(spacing)],
        "yaw_max": max(yaw), "yaw_over_10": sum(y > 10 for y in yaw),
        "hard_negatives": hard,
        "negative_candidate_share": float(np.mean(m["negative_candidates"])) if m["negative_candidates"] else 0.0,
    }


TARGET_BLOOD = {"epidural": (50, 75), "subdural": (40, 70), "subarachnoid": (38, 62),
                "intraparenchymal": (50, 75), "intraventricular": (28, 52)}


def report(r: dict) -> list[Line]:
    f1 = lambda xs: " / ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    lines = [
        Line("brain parenchyma HU (per-slice median; 5/50/95%)", "median 30-38", f1(r["brain_median"]),
             30 <= r["brain_median"][1] <= 38),
        Line("acute blood HU in the outlines (5/50/95%)", "median 50-65, mostly 40-80", f1(r["blood_hu"]) +
             f"; {r['blood_share_40_80']:.0%} in 40-80", 50 <= r["blood_hu"][1] <= 65 and r["blood_share_40_80"] >= 0.6),
        Line("bleed-to-brain contrast, all subtypes (25/50/75%)", "median 10-35 HU", f1(r["contrast_all"]),
             10 <= r["contrast_all"][1] <= 35),
    ]
    for s in SUBTYPES:
        d = r["per_subtype"][s]
        lo, hi = TARGET_BLOOD[s]
        ok = d["n"] == 0 or lo <= d["blood"][1] <= hi
        lines.append(Line(f"  {s}: blood HU / contrast (25/50/75%, {d['n']} slices)", f"blood median {lo}-{hi}",
                          f"{f1(d['blood'])} / {f1(d['contrast'])}", ok and d["n"] > 0))
    hn = r["hard_negatives"]
    lines += [
        Line("noise: local std in flat brain (5/50/95% of slices)", "2.5-6 HU", f1(r["noise_std"]),
             2.5 <= r["noise_std"][1] <= 6.0),
        Line("noise: neighbour correlation (5/50/95%)", "0.6-0.9 (not white)", " / ".join(f"{x:.2f}" for x in r["noise_corr"]),
             0.6 <= r["noise_corr"][1] <= 0.9),
        Line("pieces per positive slice", "1-5, often several",
             f"{r['pieces']['share_1_5']:.0%} have 1-5, {r['pieces']['share_2plus']:.0%} >= 2, max {r['pieces']['max']}",
             r["pieces"]["share_1_5"] >= 0.85 and r["pieces"]["share_2plus"] >= 0.2),
        Line("bleed areas (px at 512)", "tiny (~50) to >10,000",
             f"piece 5th pct {r['piece_area_p5']:.0f}, largest slice {r['slice_area_max']}",
             r["piece_area_p5"] <= 120 and r["slice_area_max"] > 10_000),
        Line("mixed subtypes on positive slices", "25-35%", f"{r['mixed_share']:.1%}", 0.25 <= r["mixed_share"] <= 0.35),
        Line("bleed-mask pixels above 100 HU (in bone)", "< 1%", f"{r['bleed_px_above_100']:.2%}", r["bleed_px_above_100"] < 0.01),
        Line("slice thickness mix (mm, per study)", "0.625-5, thin series too",
             f"{r['thickness']['values']}; {r['thickness']['thin_studies']}/{r['thickness']['studies']} thin (<= 1.25)",
             r["thickness"]["min"] <= 1.25 and r["thickness"]["max"] >= 5.0 and r["thickness"]["thin_studies"] >= 1),
        Line("pixel spacing (mm)", "0.40-0.50", f"{r['pixel_spacing'][0]:.3f}-{r['pixel_spacing'][1]:.3f}",
             r["pixel_spacing"][0] >= 0.4 and r["pixel_spacing"][1] <= 0.5 and np.ptp(r["pixel_spacing"]) >= 0.04),
        Line("head rotation (|yaw|, degrees)", "up to 30", f"max {r['yaw_max']:.1f}, {r['yaw_over_10']} studies > 10",
             10 < r["yaw_max"] <= 30 and r["yaw_over_10"] >= 1),
        Line("hard negatives (slices): calcification / venous sinus / falx-tentorium / scalp haematoma / streaks",
             "each present", " / ".join(str(hn[k]) for k in ("calcification", "venous_sinus", "falx_tentorium",
                                                            "scalp_haematoma", "streaks")),
             all(hn[k] > 0 for k in ("calcification", "venous_sinus", "falx_tentorium", "streaks"))),
        Line("acquisition oddities (studies): transposed / FOV cut / motion / craniotomy", "some present",
             " / ".join(str(hn[k]) for k in ("transposed", "fov_cut", "motion", "craniotomy")),
             sum(hn[k] > 0 for k in ("transposed", "fov_cut", "motion", "craniotomy")) >= 2),
        Line("normal slices where the blood-candidate threshold fires", "> 5% (mimics exist)",
             f"{r['negative_candidate_share']:.1%}", r["negative_candidate_share"] > 0.05),
    ]
    return lines


def pictures(root: Path, out: Path, per_row: int = 3, size: int = 160) -> list[Path]:
    """One PNG per subtype (and one of normal slices with blood mimics): `per_row` slices from different
    studies in the brain window (40/80), above the same slices with the outline drawn in red."""
    import cv2
    from scipy import ndimage as ndi

    labels, polygons, paths = _ground_truth(root)
    truth = {r["image_id"]: r for r in _read_csv(root / "_truth" / "slices.csv")}
    single = labels[labels[list(SUBTYPES)].sum(axis=1) == 1]
    groups: dict[str, list[str]] = {s: single.index[single[s] == 1].tolist() for s in SUBTYPES}
    groups["multi"] = labels.index[labels[list(SUBTYPES)].sum(axis=1) >= 2].tolist()
    mimic = lambda i: sum(int(truth[i][k]) for k in ("calcification", "venous_sinus", "scalp_haematoma")) \
        + 400 * int(truth[i]["streaks"])  # noqa: E731
    negatives = labels.index[labels["any"] == 0].tolist()
    groups["normal_with_mimics"] = sorted((i for i in negatives if i in truth), key=mimic, reverse=True)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ids in groups.items():
        ids = [i for i in ids if i in paths]
        if name in SUBTYPES or name == "multi":  # the largest outlines first
            ids.sort(key=lambda i: -int(rasterize(polygons[i], SIZE, SIZE).sum()) if i in polygons else 0)
        chosen, studies = [], set()
        for i in ids:
            study = truth[i]["study_id"]
            if study not in studies:
                chosen.append(i)
                studies.add(study)
            if len(chosen) == per_row:
                break
        tiles = []
        for i in chosen:
            hu = load_dicom(paths[i]).hu()
            grey = np.clip((hu - 0.0) / 80.0 * 255.0, 0, 255).astype(np.uint8)
            rows, cols = np.nonzero(hu > -500)
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            side = max(r1 - r0, c1 - c0)
            rc, cc = (r0 + r1) // 2, (c0 + c1) // 2
            box = (slice(max(rc - side // 2, 0), rc + side // 2), slice(max(cc - side // 2, 0), cc + side // 2))
            plain = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
            outlined = plain.copy()
            if i in polygons:
                mask = rasterize(polygons[i], SIZE, SIZE).astype(bool)
                edge = mask & ~ndi.binary_erosion(mask)
                outlined[ndi.binary_dilation(edge)] = (0, 0, 255)
            tiles.append([cv2.resize(img[box], (size, size), interpolation=cv2.INTER_AREA) for img in (plain, outlined)])
        if not tiles:
            continue
        gap = np.full((size, 4, 3), 255, np.uint8)
        top = np.hstack([x for t_ in tiles for x in (t_[0], gap)][:-1])
        bottom = np.hstack([x for t_ in tiles for x in (t_[1], gap)][:-1])
        path = out / f"phantom_{name}.png"
        cv2.imwrite(str(path), np.vstack([top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom]),
                    [cv2.IMWRITE_PNG_COMPRESSION, 9])
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="a phantom dataset (default: the default demo, cached)")
    ap.add_argument("--patients", type=int, default=None, help="patients of the generated demo (demo.patients)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the generated demo (demo.seed)")
    ap.add_argument("--negatives", type=int, default=300, help="normal slices sampled for brain and noise figures")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "phantom_realism.json")
    ap.add_argument("--pictures", type=Path, default=None,
                    help="also write side-by-side brain-window PNGs per subtype into this folder (e.g. docs/)")
    args = ap.parse_args(argv)
    root = args.data
    if root is None:
        from ichkit.phantom import cached_dataset

        demo = load_config()["demo"]
        root = cached_dataset(args.patients or demo["patients"], args.seed if args.seed is not None else demo["seed"],
                              demo["test_fraction"], demo["corrupt"])
    if args.pictures is not None:
        for path in pictures(Path(root), args.pictures):
            print(f"wrote {path}")
    t0 = time.perf_counter()
    result = measure(Path(root), args.negatives)
    lines = report(result)
    width = max(len(x.name) for x in lines)
    print(f"phantom realism of {root} ({result['slices']['measured_positive']} positive + "
          f"{result['slices']['measured_negative']} normal slices measured in {time.perf_counter() - t0:.0f} s)")
    for x in lines:
        print(f"{'PASS' if x.ok else 'FAIL'}  {x.name:<{width}}  target {x.target:<28}  measured {x.measured}")
    n_fail = sum(not x.ok for x in lines)
    print(f"{len(lines) - n_fail}/{len(lines)} lines pass")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"data": str(root), "result": result,
                                     "lines": [x.__dict__ for x in lines]}, indent=2, default=str) + "\n")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
