"""The phantom dataset (`ichkit demo-data`): real DICOM files, real label formats, plausible HU, determinism."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, RLELossless
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from ichkit.cli import main as cli_main
from ichkit.labels import CLASSES7, SUBTYPES, read_rsna_long_labels, read_wide_labels, seven_class_column
from ichkit.phantom import generate_dataset
from ichkit.phantom.anatomy import HeadAnatomy, Tissue
from ichkit.phantom.hemorrhage import sample_bleed
from ichkit.phantom.label_files import format_points, mask_polygons, normalise
from ichkit.phantom.scanner import PROTOCOLS, Acquisition
from ichkit.phantom.study import render_slice
from ichkit.readers.polygons import parse_points, rasterize

REPO = Path(__file__).resolve().parents[1]
SEED = 11
PATIENTS = 5  # with one follow-up: 6 studies, enough for every pixel encoding to appear once


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantom") / "demo"
    summary = generate_dataset(out, patients=PATIENTS, seed=SEED, test_fraction=0.2, corrupt=2, workers=2, progress=False)
    return out, summary


@pytest.fixture(autouse=True)
def quiet_uid_validation():
    """RSNA-style `ID_` UIDs are not valid UI values; pydicom warns on every access, as with the real files."""
    with pydicom.config.disable_value_validation():
        yield


def read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def first(value) -> float:
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def to_hu(ds: pydicom.Dataset) -> np.ndarray:
    """Stored pixels -> HU as the public RSNA solutions do it, including their BitsStored-12 fix."""
    pixels = ds.pixel_array.astype(np.int32)
    slope, intercept = first(ds.RescaleSlope), first(ds.RescaleIntercept)
    if ds.BitsStored == 12 and ds.PixelRepresentation == 0 and intercept > -100:
        pixels, intercept = (pixels + 1000) % 4096, -1000.0
    return pixels * slope + intercept


def readable_files(root: Path, summary: dict) -> list[Path]:
    broken = {c["image_id"] for c in summary["corrupt"]}
    return sorted(p for p in root.glob("stage_2_*/*.dcm") if p.stem not in broken)


def fov_mask(shape: tuple[int, int], radius: float) -> np.ndarray:
    c = (shape[0] - 1) / 2
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - c) ** 2 + (cc - c) ** 2 <= radius ** 2


def polygon_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file, demo.json without its timing and worker count."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name == "demo.json":
            summary = json.loads(data)
            summary.pop("seconds"), summary.pop("workers")
            data = json.dumps(summary, sort_keys=True).encode()
        out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


# ------------------------------------------------------------------------------------------- files
def test_summary_matches_files_on_disk(demo):
    root, summary = demo
    assert json.loads((root / "demo.json").read_text()) == summary
    for split in ("train", "test"):
        files = list((root / f"stage_2_{split}").glob("ID_*.dcm"))
        assert len(files) == summary["slices"][split]
        assert sum(summary["labels7"][split].values()) == len(files)
        assert 20 * summary["studies"][split] <= len(files) <= 40 * summary["studies"][split]
    assert summary["patients"] == {"train": 4, "test": 1}
    assert summary["studies"]["train"] + summary["studies"]["test"] == PATIENTS + 1  # one follow-up


def test_dicom_files_carry_the_real_tags(demo):
    root, summary = demo
    series = defaultdict(list)
    broken = {c["image_id"] for c in summary["corrupt"]}
    for path in sorted(root.glob("stage_2_*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)  # the headers of broken files are intact too
        series[ds.SeriesInstanceUID].append(ds)
        if path.stem in broken:
            continue
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
        assert ds.SOPInstanceUID == path.stem == ds.file_meta.MediaStorageSOPInstanceUID
        assert path.stem.startswith("ID_") and len(path.stem) == 12
        assert ds.PatientID.startswith("ID_") and ds.StudyInstanceUID.startswith("ID_")
        assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel) == (512, 512, 16, 1)
        assert read(path).pixel_array.shape == (512, 512)
        assert 0.40 <= float(ds.PixelSpacing[0]) == float(ds.PixelSpacing[1]) <= 0.50
        assert float(ds.SliceThickness) in {t for t, _ in PROTOCOLS}
        assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
        assert 0 < first(ds.WindowWidth) and -100 < first(ds.WindowCenter) < 200
    for slices in series.values():
        iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        normal *= np.sign(normal[2])  # a transposed series lists its axes the other way round
        z = np.array([np.dot(np.array(s.ImagePositionPatient, dtype=float), normal) for s in slices])
        order = np.argsort(z)
        steps = np.diff(z[order])
        # slices are contiguous: the step along the normal is the slice thickness, thin series included
        assert np.allclose(steps, float(slices[0].SliceThickness), atol=1e-3)
        assert [slices[i].InstanceNumber for i in order] == list(range(1, len(slices) + 1))
        assert len({s.StudyInstanceUID for s in slices}) == 1 and len({s.PatientID for s in slices}) == 1


def test_every_encoding_variant_is_present_and_decodes(demo):
    root, summary = demo
    variants = summary["variants"]
    for name in ("unsigned", "bits_stored_12", "bad_intercept", "rescale_decimal_strings", "rescale_multivalue",
                 "rle_lossless"):
        assert variants.get(name, {}).get("count", 0) >= 1, name
    by_id = {p.stem: p for p in readable_files(root, summary)}
    checks = {
        "unsigned": lambda ds: ds.PixelRepresentation == 0 and ds.BitsStored == 16,
        "bits_stored_12": lambda ds: ds.PixelRepresentation == 0 and ds.BitsStored == 12 and first(ds.RescaleIntercept) == -1024,
        "bad_intercept": lambda ds: ds.BitsStored == 12 and ds.PixelRepresentation == 0 and first(ds.RescaleIntercept) == 0,
        "rescale_decimal_strings": lambda ds: ds["RescaleIntercept"].value.original_string == "-1024.000000",
        "rescale_multivalue": lambda ds: isinstance(ds.RescaleSlope, MultiValue) and list(ds.RescaleIntercept) == [-1024, -1024],
        "rle_lossless": lambda ds: ds.file_meta.TransferSyntaxUID == RLELossless,
        "implicit_vr": lambda ds: ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
        "window_multivalue": lambda ds: isinstance(ds.WindowCenter, MultiValue),
    }
    for name, check in checks.items():
        for image_id in variants.get(name, {}).get("image_ids", [])[:3]:
            ds = read(by_id[image_id])
            assert check(ds), (name, image_id)
            assert ds.pixel_array.shape == (512, 512)
    # read without the fix, a bad-intercept file puts air at about +3096 HU
    ds = read(by_id[variants["bad_intercept"]["image_ids"][0]])
    naive = ds.pixel_array.astype(np.int32) * first(ds.RescaleSlope) + first(ds.RescaleIntercept)
    assert np.median(naive) > 3000 and np.median(to_hu(ds)) == pytest.approx(-1000, abs=15)


def test_hounsfield_units_are_plausible_per_tissue(demo):
    root, summary = demo
    brain_medians = []
    levels = {r["image_id"]: float(r["z_mm"]) for r in csv.DictReader(open(root / "_truth" / "slices.csv"))}
    opened = {i for v in ("craniotomy", "fov_cut") for i in summary["variants"].get(v, {}).get("image_ids", [])}
    for path in readable_files(root, summary)[::2]:
        ds = read(path)
        hu = to_hu(ds)
        # outside the reconstruction circle: the padding value, whatever the encoding
        if "PixelPaddingValue" in ds:
            assert ds.pixel_array[0, 0] == ds.PixelPaddingValue
            assert hu[0, 0] == ds.PixelPaddingValue * first(ds.RescaleSlope) + first(ds.RescaleIntercept)
            assert hu[0, 0] in (-3024, -1024)
        else:
            assert hu[0, 0] == -1000
        air = hu[fov_mask(hu.shape, 248) & (hu < -900)]
        assert air.size > 10_000 and abs(np.median(air) + 1000) <= 5
        if not 5.0 <= levels[path.stem] <= 40.0 or path.stem in opened:
            continue  # the cerebrum's mid levels (above the skull base, below the vertex) of an intact skull
        # the skull is a closed ring (> +600 HU, its sub-mm sutures bridged) around the brain: the region it
        # encloses misses the border
        skull = ndimage.binary_closing(hu > 600, structure=np.ones((5, 5), dtype=bool))
        enclosed, _ = ndimage.label(~skull)
        centre = tuple(int(round(c)) for c in ndimage.center_of_mass(skull))
        inside = enclosed == enclosed[centre]
        assert not skull[centre] and not (inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any())
        brain_medians.append(np.median(hu[inside & (hu > -100) & (hu < 100)]))
    assert len(brain_medians) >= 5
    assert all(25 <= m <= 42 for m in brain_medians), brain_medians
    assert 30 <= np.median(brain_medians) <= 38  # real parenchyma: median 30-38 HU


def test_bleed_polygons_outline_hyperdense_blood(demo):
    root, summary = demo
    regions = defaultdict(list)
    for row in polygon_rows(root / "Results_demo.csv"):
        text = row["Correct Label"] or row["Majority Label"]
        if text:
            regions[row["Origin"][: -len(".jpg")]] += parse_points(text)
    assert regions
    medians = []
    for image_id, polygons in regions.items():
        mask = rasterize(polygons, 512, 512).astype(bool)  # as prepare reads the polygons
        if mask.sum() < 40:
            continue
        inside = to_hu(read(root / "stage_2_train" / f"{image_id}.dcm"))[mask]
        # an outline hugging the inner table takes in a rim of partial-volume skull: leave bone out
        medians.append(np.median(inside[inside < 300]))
    assert len(medians) >= 5
    # acute blood 40-80 HU, lower where CSF dilutes it (ventricles, sulci) or a subdural is older
    assert all(15 <= m <= 85 for m in medians), medians
    assert 45 <= np.median(medians) <= 68, medians


# ------------------------------------------------------------------------------------------- labels
def test_label_files_parse_agree_and_follow_the_seven_class_rule(demo):
    root, summary = demo
    long = read_rsna_long_labels(root / "stage_2_train.csv").set_index("image_id").sort_index()
    wide = read_wide_labels(root / "hemorrhage-labels.csv").set_index("image_id").sort_index()
    assert long.equals(wide)
    assert set(long.index) == {p.stem for p in (root / "stage_2_train").glob("*.dcm")}
    assert (long["any"] == long[list(SUBTYPES)].max(axis=1)).all()
    counts = seven_class_column(long).value_counts()
    assert {c: int(counts.get(c, 0)) for c in CLASSES7} == summary["labels7"]["train"]
    # RSNA order inside each image: the five subtypes, then `any`
    with open(root / "stage_2_train.csv") as fh:
        ids = [line.split(",")[0] for line in fh.read().splitlines()[1:7]]
    assert [i.rsplit("_", 1)[1] for i in ids] == list(SUBTYPES) + ["any"]
    for c in summary["corrupt"]:
        assert c["image_id"] in long.index  # broken files stay listed, like any other image


def test_polygon_file_format_and_agreement_with_labels(demo):
    root, summary = demo
    text = (root / "Results_demo.csv").read_text()
    assert text.splitlines()[0] == "Origin,Correct Label,Majority Label,Labeling State,Number of ROIs"
    assert "\"[{'x': " in text  # CSV-quoted, single-quoted keys as in the reference files
    labels = read_rsna_long_labels(root / "stage_2_train.csv").set_index("image_id")
    rows = polygon_rows(root / "Results_demo.csv")
    outlined, per_image, junk, majority_only = set(), defaultdict(int), 0, 0
    for row in rows:
        image_id = row["Origin"][: -len(".jpg")]
        assert row["Origin"].endswith(".jpg") and image_id in labels.index
        if not row["Correct Label"] and not row["Majority Label"]:
            junk += 1
            continue
        if not row["Correct Label"]:
            majority_only += 1
        else:
            assert row["Correct Label"] == row["Majority Label"]
        outlined.add(image_id)
        per_image[image_id] += 1
        points = ast.literal_eval(row["Majority Label"])
        assert len(points) >= 3 and all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in points)
    for row in rows:
        if row["Majority Label"]:
            assert int(row["Number of ROIs"]) == per_image[row["Origin"][:-4]]
    assert outlined == set(labels.index[labels["any"] == 1])
    assert junk == summary["polygon_rows"]["junk"] >= 1
    assert majority_only == summary["polygon_rows"]["majority_only"]


def test_test_split_submission_truth_and_patients(demo):
    root, summary = demo
    test_ids = {p.stem for p in (root / "stage_2_test").glob("*.dcm")}
    with open(root / "stage_2_sample_submission.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["ID", "Label"] and len(rows) - 1 == 6 * len(test_ids)
    assert {r[0].rsplit("_", 1)[0] for r in rows[1:]} == test_ids
    assert {float(r[1]) for r in rows[1:]} == {0.5}
    truth = read_rsna_long_labels(root / "_truth" / "stage_2_test_labels.csv")
    assert set(truth["image_id"]) == test_ids
    assert int(truth["any"].sum()) == len(test_ids) - summary["labels7"]["test"]["normal"]
    patients = {split: {read(p).PatientID for p in (root / f"stage_2_{split}").glob("*.dcm")
                        if p.stem not in {c["image_id"] for c in summary["corrupt"]}} for split in ("train", "test")}
    assert patients["train"] and patients["test"] and not patients["train"] & patients["test"]


def test_volumes_cover_every_study_and_match_the_labels(demo):
    root, summary = demo
    with open(root / "_truth" / "volumes.csv", newline="") as fh:
        volumes = {r["study_id"]: r for r in csv.DictReader(fh)}
    positives_by_study = defaultdict(int)
    studies = set()
    labels = read_rsna_long_labels(root / "stage_2_train.csv").set_index("image_id")
    truth = read_rsna_long_labels(root / "_truth" / "stage_2_test_labels.csv").set_index("image_id")
    for path in readable_files(root, summary):
        ds = read(path)
        studies.add(ds.StudyInstanceUID)
        table = labels if path.parent.name == "stage_2_train" else truth
        positives_by_study[ds.StudyInstanceUID] += int(table.loc[path.stem, "any"])
    assert set(volumes) == studies
    for study, row in volumes.items():
        total = float(row["volume_ml"])
        assert (total > 0.5) == (positives_by_study[study] > 0), (study, total)
        # the union is at most the sum of the subtypes (each written with 3 decimals)
        assert total <= sum(float(row[f"volume_ml_{s}"]) for s in SUBTYPES) + 0.0005 * (len(SUBTYPES) + 1)
        assert total < 200  # mL: a plausible bleed, not a whole hemisphere


def test_corrupt_files_are_really_broken(demo):
    root, summary = demo
    assert [c["kind"] for c in summary["corrupt"]] == ["truncated", "no_pixel_data"]
    for c in summary["corrupt"]:
        path = root / c["path"]
        assert path.parent.name == "stage_2_train"
        if c["kind"] == "truncated":
            with pytest.raises(Exception):
                read(path).pixel_array
        else:
            ds = read(path)
            assert "PixelData" not in ds and ds.SOPInstanceUID == path.stem


# ------------------------------------------------------------------------------------------- shapes
def test_each_bleed_lies_where_its_subtype_belongs():
    rng = np.random.default_rng(5)
    anatomy = HeadAnatomy.sample(rng)
    acq = replace(Acquisition.sample(anatomy, rng), tilt_deg=0.0, yaw_deg=12.0)
    # one bleed of each subtype; their masks do not depend on each other, so one rendering gives all five
    bleeds = [sample_bleed(subtype, anatomy, rng) for subtype in SUBTYPES]
    masks, tissues = defaultdict(list), []
    for k in range(acq.n_slices):
        x, y, z = acq.world_grid(k)
        u, v, w = acq.to_head(x, y, z)
        tissues.append(anatomy.render(u.ravel(), v.ravel(), w.ravel()).tissue.reshape(512, 512))
        for subtype, mask in render_slice(anatomy, bleeds, acq, k, rng).masks.items():
            masks[subtype].append(mask)
    tissue = np.stack(tissues)
    for subtype in SUBTYPES:
        mask = np.stack(masks[subtype])
        assert mask.sum() > 500, subtype
        in_plane = np.ones((1, 3, 3), dtype=bool)  # grow within each slice, not across slices
        near_bone = (ndimage.binary_dilation(mask, in_plane, iterations=2) & (tissue == Tissue.BONE)).any()
        # the outline leaves out the rim (<= 3 px) that the blurred skull brightens, so look a little farther
        against_bone = (ndimage.binary_dilation(mask, in_plane, iterations=5) & (tissue == Tissue.BONE)).any()
        if subtype in ("epidural", "subdural"):
            assert against_bone, subtype  # against the inner table
        if subtype in ("intraparenchymal", "intraventricular"):
            assert not near_bone, subtype
        if subtype == "subarachnoid":
            assert np.isin(tissue[mask], (Tissue.SULCUS, Tissue.FISSURE, Tissue.CISTERN, Tissue.CSF_EXTRA)).all()
        if subtype == "intraventricular":
            assert (tissue[mask] == Tissue.VENTRICLE).all()
            # blood sinks: below a blood pixel (toward +y, down the rows) there is never clear ventricular CSF
            csf = (tissue == Tissue.VENTRICLE) & ~mask
            assert not (mask[:, :-1, :] & csf[:, 1:, :]).any()
        if subtype in ("epidural", "subdural", "intraparenchymal"):
            # one 3-D object: present in a run of adjacent slices
            present = np.flatnonzero(mask.reshape(len(mask), -1).sum(axis=1) >= 20)
            assert len(present) >= 2 and np.all(np.diff(present) == 1), (subtype, present)


def test_mask_polygons_outline_each_region():
    mask = np.zeros((64, 64), dtype=bool)
    mask[5:20, 5:25] = True
    mask[10:14, 10:14] = False               # a hole: outlined as part of the region
    rr, cc = np.ogrid[:64, :64]
    mask |= (rr - 45) ** 2 + (cc - 40) ** 2 < 81
    polygons = mask_polygons(mask)
    assert len(polygons) == 2
    filled = ndimage.binary_fill_holes(mask)
    redrawn = np.zeros_like(mask)
    for poly in polygons:
        redrawn[fill_polygon(poly[:, 0], poly[:, 1], mask.shape)] = True
    iou = (redrawn & filled).sum() / (redrawn | filled).sum()
    assert iou > 0.85


def test_polygon_text_reads_back_onto_the_same_pixels():
    """Outline -> normalised text -> the reader's rasteriser lands on the mask's pixels, not half a pixel off."""
    rr, cc = np.ogrid[:512, :512]
    mask = ((rr - 200) / 30.0) ** 2 + ((cc - 301) / 18.0) ** 2 < 1
    text = [format_points(normalise(p, mask.shape)) for p in mask_polygons(mask)]
    redrawn = rasterize([region for t in text for region in parse_points(t)], 512, 512).astype(bool)
    assert (redrawn & mask).sum() / (redrawn | mask).sum() > 0.95
    np.testing.assert_allclose(ndimage.center_of_mass(redrawn), ndimage.center_of_mass(mask), atol=0.05)


# ------------------------------------------------------------------------------------------- runs
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = generate_dataset(tmp_path / "a", patients=2, seed=3, test_fraction=0.5, corrupt=1, workers=1, progress=False)
    generate_dataset(tmp_path / "b", patients=2, seed=3, test_fraction=0.5, corrupt=1, workers=2, progress=False)
    generate_dataset(tmp_path / "c", patients=2, seed=4, test_fraction=0.5, corrupt=1, workers=2, progress=False)
    da, db, dc = (tree_digest(tmp_path / n) for n in "abc")
    assert len(da) == a["slices"]["train"] + a["slices"]["test"] + 10
    assert da == db
    assert da != dc and not set(da.values()) & set(v for k, v in dc.items() if k.endswith(".dcm"))


def test_cli_writes_then_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo-data", "--out", str(out), "--patients", "1", "--seed", "8", "--test-fraction", "0", "--corrupt", "0"]
    assert cli_main(args) == 0
    assert "phantom dataset in" in capsys.readouterr().out
    summary = json.loads((out / "demo.json").read_text())
    assert summary["patients"] == {"train": 1, "test": 0} and summary["corrupt"] == []
    (out / "notes.txt").write_text("mine")
    assert cli_main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert cli_main(args + ["--force", "--seed", "9"]) == 0
    assert json.loads((out / "demo.json").read_text())["seed"] == 9
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces only what the generator wrote


def test_cli_takes_its_defaults_from_the_config_only(tmp_path, capsys, monkeypatch):
    import argparse

    from ichkit.config import load_config
    from ichkit.phantom import cli, dataset

    seen = {}
    monkeypatch.setattr(dataset, "generate_dataset", lambda out, **kw: seen.update(kw) or {})
    monkeypatch.setattr(cli, "format_summary", lambda out, summary: "")
    cfg = load_config(overrides=[f"demo.out={tmp_path / 'd'}", "demo.patients=3", "demo.seed=5"])
    flags = argparse.Namespace(out=None, patients=None, seed=None, test_fraction=None, corrupt=None, workers=None,
                               force=False)
    assert cli.run(flags, cfg) == 0
    demo = load_config()["demo"]
    assert seen == {"patients": 3, "seed": 5, "test_fraction": demo["test_fraction"], "corrupt": demo["corrupt"],
                    "workers": demo["workers"]}
    del cfg["demo"]["seed"]
    with pytest.raises(dataset.PhantomError, match=r"demo\.seed is missing"):
        cli.run(flags, cfg)


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="patients"):
        generate_dataset(tmp_path / "x", patients=0, seed=1)
    with pytest.raises(ValueError, match="test_fraction"):
        generate_dataset(tmp_path / "x", patients=2, seed=1, test_fraction=1.0)
    (tmp_path / "y" / "stage_2_train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="stage_2_train"):
        generate_dataset(tmp_path / "y", patients=1, seed=1)


# ------------------------------------------------------------------------------------------- realism
def test_realism_bench_measures_every_target_on_a_small_phantom(demo, tmp_path, capsys):
    """bench/phantom_realism.py on the 5-patient phantom: every target line is printed with its measured
    figure, and the physics that does not depend on the demo's size passes."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("phantom_realism", REPO / "bench" / "phantom_realism.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["phantom_realism"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    root, _ = demo
    rc = bench.main(["--data", str(root), "--negatives", "20", "--json", str(tmp_path / "r.json"),
                     "--pictures", str(tmp_path / "pictures")])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    result = json.loads((tmp_path / "r.json").read_text())
    assert len(lines) == len(result["lines"]) >= 18 and rc == (0 if all(x["ok"] for x in result["lines"]) else 1)
    ok = {x["name"].split(" (")[0].strip(): x["ok"] for x in result["lines"]}
    for name in ("brain parenchyma HU", "noise: local std in flat brain", "noise: neighbour correlation",
                 "bleed-mask pixels above 100 HU", "pixel spacing", "bleed-to-brain contrast, all subtypes"):
        assert ok[name], (name, out)
    r = result["result"]
    assert 30 <= r["brain_median"][1] <= 38 and 0.6 <= r["noise_corr"][1] <= 0.9 and r["bleed_px_above_100"] < 0.01
    assert sorted(p.name for p in (tmp_path / "pictures").glob("*.png"))  # side-by-side brain-window pictures
