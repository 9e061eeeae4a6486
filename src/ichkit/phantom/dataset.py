"""Generate the whole phantom dataset: plan, render patients in parallel, write labels and a summary.

Determinism: the plan (splits, bleeds, follow-ups, file encodings, corrupt files, annotation quirks) comes
from one generator seeded by child 0 of `SeedSequence(seed).spawn(patients + 1)`; patient i renders with
child i + 1 only. Ids are drawn from those generators and no date or clock enters a file, so a seed gives
byte-identical files whatever the number of workers (demo.json's timing fields aside).

The output is complete once `demo.json` exists; it is written last.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ichkit.errors import IchkitError
from ichkit.labels import CLASSES7, RSNA_LABELS, SUBTYPES, seven_class
from ichkit.phantom import label_files
from ichkit.phantom.anatomy import HeadAnatomy
from ichkit.phantom.hemorrhage import (EPIDURAL, INTRAPARENCHYMAL, INTRAVENTRICULAR, SUBARACHNOID, SUBDURAL,
                                       sample_bleeds)
from ichkit.phantom.scanner import IMAGE_SIZE, Acquisition
from ichkit.phantom.study import render_slice
from ichkit.phantom.writer import CORRUPTIONS, PIXEL_ENCODINGS, FileEncoding, SliceHeader, corrupt_file, write_slice
from ichkit.workers import process_pool, worker_count


class PhantomError(IchkitError):
    """A phantom request that cannot run as given (counts, fraction, seed, output folder); names it."""


TRAIN_DIR, TEST_DIR, TRUTH_DIR = "stage_2_train", "stage_2_test", "_truth"
TRAIN_LABELS, WIDE_LABELS = "stage_2_train.csv", "hemorrhage-labels.csv"
POLYGONS, SAMPLE_SUBMISSION = "Results_demo.csv", "stage_2_sample_submission.csv"
SUMMARY = "demo.json"
# everything generate_dataset writes directly under `out`
OUTPUTS: tuple[str, ...] = (TRAIN_DIR, TEST_DIR, TRUTH_DIR, TRAIN_LABELS, WIDE_LABELS, POLYGONS, SAMPLE_SUBMISSION, SUMMARY)

# Bleeds per patient, one block of 20 patients; each block is shuffled, so every 20 patients hold this mix.
# A second bleed is placed relative to the first (an intraparenchymal clot next to ventricular blood is a
# deep, hypertensive one; subarachnoid blood after an extra-axial collection lies under it), and where they
# overlap along z the slices are `multi`.
SCENARIO_BLOCK: tuple[tuple[str, ...], ...] = (
    (), (), (), (),
    (EPIDURAL,), (EPIDURAL,),
    (SUBDURAL,), (SUBDURAL,),
    (SUBARACHNOID,),
    (INTRAPARENCHYMAL,), (INTRAPARENCHYMAL,),
    (INTRAVENTRICULAR,),
    (EPIDURAL, SUBDURAL),
    (INTRAVENTRICULAR, INTRAPARENCHYMAL),
    (SUBDURAL, SUBARACHNOID),
    (EPIDURAL, SUBARACHNOID),
    (SUBARACHNOID, INTRAVENTRICULAR),
    (SUBDURAL, INTRAPARENCHYMAL),          # traumatic: a contusion under the collection
    (INTRAPARENCHYMAL, INTRAVENTRICULAR),  # a deep haematoma rupturing into the ventricles
    (SUBARACHNOID, SUBDURAL),
)
# share of studies per pixel encoding once each unusual one has appeared at least once
ENCODING_WEIGHTS: dict[str, float] = {
    "standard": 0.72, "unsigned": 0.06, "bits_stored_12": 0.06, "bad_intercept": 0.06,
    "rescale_decimal_strings": 0.05, "rescale_multivalue": 0.05,
}
FOLLOW_UP_SHARE = 0.10      # patients scanned twice
RLE_SHARE = 0.03            # files written RLE Lossless compressed
IMPLICIT_VR_SHARE = 0.10    # studies written Implicit VR Little Endian
WINDOW_MULTIVALUE_SHARE = 0.25
ADJUDICATED_SHARE = 0.85    # polygon images whose outline is in `Correct Label` (the rest: majority only)
JUNK_ROW_SHARE = 0.03       # polygon rows with no region at all, which readers must skip
SUGGESTED_WINDOWS = ((40.0, 80.0), (40.0, 80.0), (35.0, 80.0), (40.0, 120.0), (30.0, 90.0))


@dataclass(frozen=True)
class StudyPlan:
    pixels: str
    implicit_vr: bool
    window_multivalue: bool
    force_rle: bool           # at least one RLE file in this study, so even a tiny demo has one


@dataclass(frozen=True)
class PatientPlan:
    index: int
    seed: np.random.SeedSequence
    split: str
    bleeds: tuple[str, ...]
    studies: tuple[StudyPlan, ...]
    out: Path


@dataclass
class SliceRecord:
    image_id: str
    patient_id: str
    study_id: str
    split: str
    path: str                                   # relative to the dataset root
    labels: dict[str, int]
    polygons: list[np.ndarray]                  # normalised (x, y) outlines of the labelled bleed
    variants: list[str] = field(default_factory=list)
    hard_negatives: dict[str, int] = field(default_factory=dict)
    z_mm: float = 0.0                           # slice centre height in the head frame (skull base < 0)


@dataclass
class StudyRecord:
    study_id: str
    patient_id: str
    split: str
    slices: int
    volume_ml: dict[str, float]                 # per subtype, and "total" for the union
    acquisition: dict[str, float | int | str] = field(default_factory=dict)  # the study's sampled domain


@dataclass
class PatientResult:
    slices: list[SliceRecord]
    studies: list[StudyRecord]


def new_id(rng: np.random.Generator, digits: int) -> str:
    """An RSNA-style anonymised id: `ID_` + `digits` lowercase hex digits."""
    return f"ID_{int(rng.integers(0, 16 ** digits)):0{digits}x}"


# ------------------------------------------------------------------------------------------------ plan
def plan_dataset(out: Path, patients: int, seed: int, test_fraction: float) -> tuple[list[PatientPlan], np.random.Generator]:
    """Decide every patient's split, bleeds, studies and file encodings. Returns the plans and the
    planning generator (used afterwards for corrupt files and annotation quirks)."""
    plan_seq, *patient_seqs = np.random.SeedSequence(seed).spawn(patients + 1)
    rng = np.random.default_rng(plan_seq)

    blocks = -(-patients // len(SCENARIO_BLOCK))
    deck = [SCENARIO_BLOCK[i] for _ in range(blocks) for i in rng.permutation(len(SCENARIO_BLOCK))][:patients]

    n_test = int(round(test_fraction * patients))
    if test_fraction > 0 and patients >= 2:
        n_test = min(max(n_test, 1), patients - 1)  # both splits non-empty
    test = _stratified_sample(deck, n_test, rng)

    n_follow = max(1, int(round(FOLLOW_UP_SHARE * patients))) if patients >= 2 else 0
    follow = set(rng.choice(patients, size=n_follow, replace=False).tolist())
    n_studies = [2 if i in follow else 1 for i in range(patients)]

    total = sum(n_studies)
    unusual = [e for e in PIXEL_ENCODINGS if e != "standard"]
    weights = np.array([ENCODING_WEIGHTS[e] for e in PIXEL_ENCODINGS])
    drawn = rng.choice(len(PIXEL_ENCODINGS), size=max(total - len(unusual), 0), p=weights / weights.sum())
    encodings = (unusual + [PIXEL_ENCODINGS[i] for i in drawn])[:total]
    encodings = [encodings[i] for i in rng.permutation(total)]
    implicit = rng.random(total) < IMPLICIT_VR_SHARE
    windows = rng.random(total) < WINDOW_MULTIVALUE_SHARE
    forced_rle = int(rng.integers(total))

    plans, k = [], 0
    for i in range(patients):
        studies = []
        for _ in range(n_studies[i]):
            studies.append(StudyPlan(encodings[k], bool(implicit[k]), bool(windows[k]), force_rle=k == forced_rle))
            k += 1
        plans.append(PatientPlan(i, patient_seqs[i], "test" if i in test else "train", deck[i], tuple(studies), out))
    return plans, rng


def _stratified_sample(deck: list[tuple[str, ...]], n: int, rng: np.random.Generator) -> set[int]:
    """`n` patient indices spread evenly over the bleed scenarios (systematic sampling of the patients
    ordered by scenario), so the training split keeps its share of every, even the rarest, subtype."""
    if n == 0:
        return set()
    tiebreak = rng.random(len(deck))
    order = sorted(range(len(deck)), key=lambda i: (SCENARIO_BLOCK.index(deck[i]), tiebreak[i]))
    step = len(deck) / n
    start = rng.uniform(0, step)
    return {order[int(start + i * step)] for i in range(n)}


# ------------------------------------------------------------------------------------------------ worker
def generate_patient(plan: PatientPlan) -> PatientResult:
    """Render and write every slice of one patient (runs in a worker process)."""
    rng = np.random.default_rng(plan.seed)
    anatomy = HeadAnatomy.sample(rng)
    bleeds = sample_bleeds(plan.bleeds, anatomy, rng)
    patient_id = new_id(rng, 8)
    folder = TRAIN_DIR if plan.split == "train" else TEST_DIR
    slices: list[SliceRecord] = []
    studies: list[StudyRecord] = []
    for s, study in enumerate(plan.studies):
        if s > 0:  # a follow-up scan a few days later, on whichever scanner was free
            bleeds = [b.follow_up(rng) for b in bleeds]
        acq = Acquisition.sample(anatomy, rng)
        study_id, series_id = new_id(rng, 10), new_id(rng, 10)
        window = SUGGESTED_WINDOWS[int(rng.integers(len(SUGGESTED_WINDOWS)))]
        fov = acq.fov_mask()
        sc = acq.scanner
        voxels = Counter()
        noise = acq.noise_field(rng)
        for k in range(acq.n_slices):
            rendered = render_slice(anatomy, bleeds, acq, k, rng, noise)
            image_id = new_id(rng, 9)
            rle = bool(rng.random() < RLE_SHARE) or (study.force_rle and k == acq.n_slices // 2)
            encoding = FileEncoding(pixels=study.pixels, implicit_vr=study.implicit_vr and not rle, rle=rle,
                                    window_multivalue=study.window_multivalue)
            header = SliceHeader(
                patient_id=patient_id, study_uid=study_id, series_uid=series_id, sop_uid=image_id,
                instance_number=k + 1, series_number=2, position=tuple(acq.image_position(k)),
                orientation=tuple(acq.image_orientation), pixel_spacing=sc.pixel_spacing,
                slice_thickness=sc.slice_thickness, window=window, manufacturer=sc.manufacturer, model=sc.model,
                kvp=sc.kvp,
            )
            write_slice(plan.out / folder / f"{image_id}.dcm", rendered.hu, fov, header, encoding)

            labels = rendered.labels()
            polygons = []
            if labels["any"]:
                polygons = [label_files.normalise(p, (IMAGE_SIZE, IMAGE_SIZE))
                            for p in label_files.mask_polygons(rendered.labelled_mask())]
            if any(rendered.pixels.values()):
                voxels.update(rendered.pixels)
                voxels["total"] += int(np.count_nonzero(rendered.bleed_mask()))
            slices.append(SliceRecord(
                image_id=image_id, patient_id=patient_id, study_id=study_id, split=plan.split,
                path=f"{folder}/{image_id}.dcm", labels=labels, polygons=polygons,
                variants=_variants(study, encoding, acq, anatomy), hard_negatives=rendered.hard_negatives,
                z_mm=float(acq.slice_centre(k)[2] - acq.head_origin[2]),
            ))
        voxel_ml = sc.pixel_spacing ** 2 * sc.slice_spacing / 1000.0
        studies.append(StudyRecord(study_id, patient_id, plan.split, acq.n_slices,
                                   {key: voxels[key] * voxel_ml for key in SUBTYPES + ("total",)},
                                   _acquisition_truth(acq, anatomy, bleeds)))
    return PatientResult(slices, studies)


def _acquisition_truth(acq: Acquisition, anatomy: HeadAnatomy, bleeds: list) -> dict[str, float | int | str]:
    """What was sampled for one study (domain randomisation), for `_truth/acquisitions.csv`."""
    sc = acq.scanner
    return {
        "slice_thickness_mm": sc.slice_thickness, "pixel_spacing_mm": sc.pixel_spacing,
        "noise_sigma_hu": round(sc.noise_sigma, 3), "blur_sigma_px": round(sc.blur_sigma, 3),
        "noise_grain_px": round(sc.noise_grain, 3), "yaw_deg": round(acq.yaw_deg, 2), "tilt_deg": round(acq.tilt_deg, 2),
        "offset_x_mm": round(acq.head_origin[0], 2), "offset_y_mm": round(acq.head_origin[1], 2),
        "transposed": int(acq.transposed), "fov_cut": int(acq.fov_cut), "motion": int(acq.motion is not None),
        "streaks_hu": round(acq.streaks, 2), "craniotomy": int(anatomy.craniotomy is not None),
        "scalp_haematoma": int(anatomy.scalp_haematoma is not None),
        "blood_hu": ";".join(f"{b.subtype}:{b.hu:.1f}" for b in bleeds),
    }


def _variants(study: StudyPlan, encoding: FileEncoding, acq: Acquisition, anatomy: HeadAnatomy) -> list[str]:
    """The unusual things about a file, as listed in demo.json."""
    out = [] if study.pixels == "standard" else [study.pixels]
    if encoding.rle:
        out.append("rle_lossless")
    if encoding.implicit_vr:
        out.append("implicit_vr")
    if encoding.window_multivalue:
        out.append("window_multivalue")
    if acq.tilt_deg:
        out.append("gantry_tilt")
    if acq.transposed:
        out.append("transposed")
    if acq.fov_cut:
        out.append("fov_cut")
    if acq.motion is not None:
        out.append("motion_blur")
    if acq.scanner.slice_thickness <= 1.25:
        out.append("thin_slices")
    if anatomy.craniotomy is not None:
        out.append("craniotomy")
    return out


# ------------------------------------------------------------------------------------------------ driver
def generate_dataset(out: Path, patients: int, seed: int, test_fraction: float = 0.2, corrupt: int = 2,
                     workers: int = 0, progress: bool = True) -> dict:
    """Write the phantom dataset under `out` and return its summary (also saved as `out/demo.json`).

    Raises PhantomError (bad counts or seed), WorkerSettingError (workers), NotADirectoryError if `out` is a
    file and FileExistsError if `out` already holds any of its outputs.
    `workers` = 0 uses every core.
    """
    started = time.perf_counter()
    out = Path(out)
    _check_arguments(out, patients, test_fraction, corrupt)
    workers = worker_count(workers, jobs=patients, key="demo.workers")
    for folder in (TRAIN_DIR, TEST_DIR, TRUTH_DIR):
        (out / folder).mkdir(parents=True, exist_ok=True)

    plans, plan_rng = plan_dataset(out.resolve(), patients, seed, test_fraction)
    results: list[PatientResult] = []
    with tqdm(total=patients, unit="patient", desc="phantom", disable=not progress) as bar:
        if workers == 1:
            for plan in plans:
                results.append(generate_patient(plan))
                bar.update()
        else:
            # patients scanned twice first, so that no long patient is left alone at the end; the results
            # are put back in plan order (each patient depends on its own seed only)
            order = sorted(range(len(plans)), key=lambda i: -len(plans[i].studies))
            by_index: dict[int, PatientResult] = {}
            with process_pool(workers, preload=("ichkit.phantom.dataset",)) as pool:
                for i, result in zip(order, pool.map(generate_patient, [plans[i] for i in order])):
                    by_index[i] = result
                    bar.update()
            results = [by_index[i] for i in range(len(plans))]

    slices = [s for r in results for s in r.slices]
    studies = [s for r in results for s in r.studies]
    ids = Counter(s.image_id for s in slices)
    duplicate = next((i for i, n in ids.items() if n > 1), None)
    if duplicate is not None:  # 9 hex digits: about one seed in 30,000 at 2,000 images
        raise PhantomError(f"seed {seed} drew image id {duplicate} twice; choose another seed")

    corrupted = _corrupt(out, slices, corrupt, plan_rng)
    polygon_rows = _polygon_rows([s for s in slices if s.split == "train"], plan_rng)
    truth_rows = _polygon_rows([s for s in slices if s.split == "test"], plan_rng)
    _write_tables(out, slices, studies, polygon_rows, truth_rows)
    summary = _summary(seed, patients, test_fraction, slices, studies, corrupted, polygon_rows, workers,
                       time.perf_counter() - started)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_arguments(out: Path, patients: int, test_fraction: float, corrupt: int) -> None:
    if int(patients) != patients or patients < 1:
        raise PhantomError(f"patients must be a positive integer, got {patients!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise PhantomError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if int(corrupt) != corrupt or corrupt < 0:
        raise PhantomError(f"corrupt must be a non-negative integer, got {corrupt!r}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present:
        raise FileExistsError(f"{out} already holds a dataset ({', '.join(present)}); remove it or choose another folder")


def _corrupt(out: Path, slices: list[SliceRecord], count: int, rng: np.random.Generator) -> list[dict]:
    """Break `count` normal, uncompressed training files (they stay in the label CSVs)."""
    if not count:
        return []
    candidates = sorted(s.image_id for s in slices
                        if s.split == "train" and not s.labels["any"] and "rle_lossless" not in s.variants)
    if count > len(candidates):
        raise PhantomError(f"cannot corrupt {count} files: only {len(candidates)} normal training files")
    chosen = sorted(rng.choice(candidates, size=count, replace=False).tolist())
    by_id = {s.image_id: s for s in slices}
    corrupted = []
    for i, image_id in enumerate(chosen):
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        record = by_id[image_id]
        corrupt_file(out / record.path, kind)
        record.variants = []  # no longer a readable example of its encoding
        corrupted.append({"image_id": image_id, "path": record.path, "kind": kind})
    return corrupted


def _polygon_rows(slices: list[SliceRecord], rng: np.random.Generator) -> list[label_files.PolygonRow]:
    """One row per region of every image with an outline; some only in `Majority Label`, a few junk rows."""
    annotated = sorted((s for s in slices if s.polygons), key=lambda s: s.image_id)
    adjudicated = rng.random(len(annotated)) < ADJUDICATED_SHARE
    rows = []
    for record, correct in zip(annotated, adjudicated):
        for poly in record.polygons:
            rows.append(label_files.PolygonRow(record.image_id, label_files.format_points(poly), bool(correct),
                                               len(record.polygons)))
    if annotated:
        n_junk = max(1, int(round(JUNK_ROW_SHARE * len(annotated))))
        for i in sorted(rng.choice(len(annotated), size=min(n_junk, len(annotated)), replace=False).tolist()):
            rows.append(label_files.PolygonRow(annotated[i].image_id, None, False, 0))
    rows.sort(key=lambda r: r.image_id)  # stable: an image's junk row follows its regions
    return rows


def _write_tables(out: Path, slices: list[SliceRecord], studies: list[StudyRecord],
                  polygon_rows: list[label_files.PolygonRow], truth_rows: list[label_files.PolygonRow]) -> None:
    train = {s.image_id: s.labels for s in slices if s.split == "train"}
    test = {s.image_id: s.labels for s in slices if s.split == "test"}
    label_files.write_long_labels(out / TRAIN_LABELS, train)
    label_files.write_wide_labels(out / WIDE_LABELS, train)
    label_files.write_polygons(out / POLYGONS, polygon_rows)
    label_files.write_sample_submission(out / SAMPLE_SUBMISSION, list(test))
    truth = out / TRUTH_DIR
    label_files.write_long_labels(truth / "stage_2_test_labels.csv", test)
    label_files.write_polygons(truth / "Results_test.csv", truth_rows)
    with open(truth / "volumes.csv", "w") as fh:
        fh.write("study_id,patient_id,split,slices,volume_ml," + ",".join(f"volume_ml_{s}" for s in SUBTYPES) + "\n")
        for st in sorted(studies, key=lambda st: st.study_id):
            per_type = ",".join(f"{st.volume_ml[s]:.3f}" for s in SUBTYPES)
            fh.write(f"{st.study_id},{st.patient_id},{st.split},{st.slices},{st.volume_ml['total']:.3f},{per_type}\n")
    acq_keys = list(studies[0].acquisition) if studies else []
    with open(truth / "acquisitions.csv", "w") as fh:
        fh.write("study_id,split," + ",".join(acq_keys) + "\n")
        for st in sorted(studies, key=lambda st: st.study_id):
            fh.write(f"{st.study_id},{st.split}," + ",".join(str(st.acquisition[k]) for k in acq_keys) + "\n")
    hard_keys = list(slices[0].hard_negatives) if slices else []
    with open(truth / "slices.csv", "w") as fh:
        # per slice: where it lies (mm above the cavity centre) and the pixels of each blood mimic in it
        fh.write("image_id,study_id,split,z_mm," + ",".join(hard_keys) + "\n")
        for s in sorted(slices, key=lambda s: s.image_id):
            fh.write(f"{s.image_id},{s.study_id},{s.split},{s.z_mm:.2f}," + ",".join(str(s.hard_negatives[k]) for k in hard_keys) + "\n")


def _summary(seed: int, patients: int, test_fraction: float, slices: list[SliceRecord], studies: list[StudyRecord],
             corrupted: list[dict], polygon_rows: list[label_files.PolygonRow], workers: int, seconds: float) -> dict:
    def per_split(items, key=lambda x: x.split) -> dict[str, int]:
        c = Counter(key(x) for x in items)
        return {"train": c.get("train", 0), "test": c.get("test", 0)}

    def classes(split: str) -> dict[str, int]:
        c = Counter(seven_class(s.labels["any"], s.labels) for s in slices if s.split == split)
        return {name: c.get(name, 0) for name in CLASSES7}

    variants: dict[str, list[str]] = {}
    for s in slices:
        for v in s.variants:
            variants.setdefault(v, []).append(s.image_id)
    train = [s for s in slices if s.split == "train"]
    return {
        "generator": "ichkit.phantom",
        "seed": seed,
        "test_fraction": test_fraction,
        "patients": per_split({(s.patient_id, s.split) for s in slices}, key=lambda x: x[1]),
        "studies": per_split(studies),
        "slices": per_split(slices),
        "labels7": {"train": classes("train"), "test": classes("test")},
        "rsna_positives_train": {name: sum(s.labels[name] for s in train) for name in RSNA_LABELS},
        "train_positives_with_polygons": sum(1 for s in train if s.labels["any"] and s.polygons),
        "polygon_rows": {
            "total": len(polygon_rows),
            "majority_only": sum(1 for r in polygon_rows if r.points is not None and not r.adjudicated),
            "junk": sum(1 for r in polygon_rows if r.points is None),
        },
        "corrupt": corrupted,
        "variants": {name: {"count": len(ids), "image_ids": sorted(ids)} for name, ids in sorted(variants.items())},
        "files": {"train_labels": TRAIN_LABELS, "wide_labels": WIDE_LABELS, "polygons": POLYGONS,
                  "sample_submission": SAMPLE_SUBMISSION, "test_truth": f"{TRUTH_DIR}/stage_2_test_labels.csv",
                  "test_polygons": f"{TRUTH_DIR}/Results_test.csv", "volumes": f"{TRUTH_DIR}/volumes.csv",
                  "acquisitions": f"{TRUTH_DIR}/acquisitions.csv", "slice_truth": f"{TRUTH_DIR}/slices.csv"},
        "workers": workers,
        "seconds": round(seconds, 2),
    }


def cached_dataset(patients: int, seed: int, test_fraction: float = 0.2, corrupt: int = 2,
                   parent: Path | None = None) -> Path:
    """A phantom dataset written once under `parent` (default: the temp folder) and reused by later calls.

    The folder name carries the arguments and a hash of the generator's own source, so a change to the
    phantom code gets a fresh dataset instead of silently reusing one drawn by the old code. Benchmarks
    use this to time several runs on the same files.
    """
    import hashlib
    import shutil
    import tempfile

    code = hashlib.sha256()
    for src in sorted(Path(__file__).parent.glob("*.py")):
        code.update(src.read_bytes())
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir()) / "ichkit-phantoms"
    out = parent / f"{patients}p-seed{seed}-test{test_fraction:g}-corrupt{corrupt}-{code.hexdigest()[:10]}"
    if not (out / SUMMARY).is_file():  # demo.json is written last: without it the folder is incomplete
        shutil.rmtree(out, ignore_errors=True)
        print(f"writing {patients} phantom patients to {out}", flush=True)
        generate_dataset(out, patients=patients, seed=seed, test_fraction=test_fraction, corrupt=corrupt,
                         workers=0, progress=True)
    return out
