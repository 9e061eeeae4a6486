"""The dataset readers on small real datasets written into tmp_path, polygon parsing and rasterisation."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from readers_fixtures import (
    CTICH_HEADER,
    ctich_row,
    region_cell,
    square,
    write_csv,
    write_dicom,
    write_image,
    write_jpg,
    write_nifti,
    write_results_csv,
    write_rsna_labels,
    write_sample_submission,
)

from ichkit import readers
from ichkit.labels import RSNA_LABELS, LabelFileError
from ichkit.readers import images, polygons, renders
from ichkit.slicedata import BadInput
from ichkit.table import COLUMNS, POLYGON_COLUMNS


def row_of(ds, image_id: str) -> pd.Series:
    rows = ds.slices[ds.slices["image_id"] == image_id]
    assert len(rows) == 1, image_id
    return rows.iloc[0]


def labels_of(row: pd.Series) -> dict[str, int]:
    return {name: int(row[name]) for name in RSNA_LABELS}


def assert_schema(ds) -> None:
    assert list(ds.slices.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in ds.slices.dtypes.items()} == COLUMNS
    assert list(ds.polygons.columns) == list(POLYGON_COLUMNS)
    assert ds.slices["image_id"].str.startswith("ID_").all()


# --- polygons ---------------------------------------------------------------------------------------------

def test_parse_points_reads_the_single_quoted_cell_format():
    cell = "[[{'x': 0.1, 'y': 0.2}, {'x': 0.3, 'y': 0.2}, {'x': 0.3, 'y': 0.4}], [{'x': 0.5, 'y': 0.5}, {'x': 0.6, 'y': 0.5}, {'x': 0.6, 'y': 0.7}]]"
    regions = polygons.parse_points(cell)
    assert len(regions) == 2
    np.testing.assert_allclose(regions[0], [[0.1, 0.2], [0.3, 0.2], [0.3, 0.4]])
    np.testing.assert_allclose(regions[1], [[0.5, 0.5], [0.6, 0.5], [0.6, 0.7]])


@pytest.mark.parametrize("cell, n_regions", [
    ("[{'x': 0.1, 'y': 0.2}, {'x': 0.3, 'y': 0.2}, {'x': 0.3, 'y': 0.4}]", 1),   # a bare region
    ("[[0.1, 0.2], [0.3, 0.2], [0.3, 0.4]]", 1),                                   # [x, y] points (the table's JSON)
    ("[\"[{'x': 0.1, 'y': 0.2}, {'x': 0.3, 'y': 0.2}, {'x': 0.3, 'y': 0.4}]\", '[]']", 1),  # wrapped in strings
    ("[]", 0), ("", 0), ("[[]]", 0), (float("nan"), 0),
])
def test_parse_points_variants(cell, n_regions):
    regions = polygons.parse_points(cell)
    assert len(regions) == n_regions
    for r in regions:
        np.testing.assert_allclose(r, [[0.1, 0.2], [0.3, 0.2], [0.3, 0.4]])


@pytest.mark.parametrize("cell, problem", [
    ("[[{'x': 0.1, 'y': 0.2}", "not a list of points"),
    ("[[{'x': 'left', 'y': 0.2}, {'x': 0.3, 'y': 0.2}, {'x': 0.3, 'y': 0.4}]]", "not a number"),
    ("[[{'x': 120, 'y': 80}, {'x': 300, 'y': 80}, {'x': 300, 'y': 200}]]", "normalised"),
    ("{'x': 0.1}", "expected a list"),
])
def test_parse_points_rejects_malformed_cells(cell, problem):
    with pytest.raises(ValueError, match=problem):
        polygons.parse_points(cell)


def test_read_polygon_csv_prefers_correct_then_majority_then_skips(tmp_path, caplog):
    a, b = square(0.1, 0.1, 0.3, 0.3), square(0.5, 0.5, 0.7, 0.7)
    path = write_results_csv(tmp_path / "Results_Epidural Hemorrhage Detection_2020.csv", [
        ("ID_aaa.jpg", region_cell(a), region_cell(b)),       # Correct wins over Majority
        ("ID_bbb.jpg", "", region_cell(b)),                    # no Correct -> Majority
        ("ID_ccc.jpg", "[]", "[]"),                            # nothing -> skipped
        ("ID_ddd.jpg", "[]", region_cell(a, b)),               # empty Correct -> Majority, two regions
        ("ID_aaa.jpg", region_cell(b), ""),                    # a second row for aaa
    ])
    with caplog.at_level(logging.WARNING):
        df = polygons.read_polygon_csv(path)
    assert list(df.columns) == list(POLYGON_COLUMNS)
    by_image = polygons.polygons_by_image(df)
    assert sorted(by_image) == ["ID_aaa", "ID_bbb", "ID_ddd"]
    np.testing.assert_allclose(by_image["ID_aaa"][0], a)
    np.testing.assert_allclose(by_image["ID_aaa"][1], b)
    np.testing.assert_allclose(by_image["ID_bbb"][0], b)
    assert len(by_image["ID_ddd"]) == 2
    # source names the file and the line (header is line 1)
    assert df.loc[df["image_id"] == "ID_bbb", "source"].tolist() == [f"{path.name}:3"]
    assert any("1 rows have no region" in r.getMessage() for r in caplog.records)

    # several rows of one image union into one mask
    mask = readers.load_mask(pd.Series({"mask_path": ""}), tmp_path, by_image["ID_aaa"], 100, 100)
    expected = polygons.rasterize([a], 100, 100) | polygons.rasterize([b], 100, 100)
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 2 * 20 * 20


def test_read_polygon_csv_malformed_cell_names_file_and_line(tmp_path):
    path = write_results_csv(tmp_path / "Results_x.csv", [
        ("ID_aaa.jpg", region_cell(square(0.1, 0.1, 0.3, 0.3)), ""),
        ("ID_bbb.jpg", "[[{'x': 0.1, 'y': 0.2}, {'x': 0.3", ""),
    ])
    with pytest.raises(LabelFileError, match=r"Results_x\.csv:3: Correct Label: not a list of points"):
        polygons.read_polygon_csv(path)


def test_read_polygon_csv_line_numbers_follow_multiline_records(tmp_path):
    path = tmp_path / "Results_multiline.csv"
    cell = region_cell(square(0.1, 0.1, 0.3, 0.3)).replace("}, {", "},\n{")  # a cell spanning 4 lines
    write_results_csv(path, [("ID_aaa.jpg", cell, ""), ("ID_bbb.jpg", region_cell(square(0.5, 0.5, 0.6, 0.6)), "")])
    df = polygons.read_polygon_csv(path)
    assert df["source"].tolist() == [f"{path.name}:2", f"{path.name}:6"]


def test_read_polygon_csv_without_label_columns_warns_and_gives_nothing(tmp_path, caplog):
    path = write_csv(tmp_path / "Results_Brain Hemorrhage Tracing.csv", ["Origin", "ROI"], [("ID_aaa.jpg", "x")])
    with caplog.at_level(logging.WARNING):
        df = polygons.read_polygon_csv(path)
    assert df.empty
    assert any("neither Correct Label nor Majority Label" in r.getMessage() for r in caplog.records)


def test_rasterize_square_and_circle_match_their_analytic_area():
    size = 512
    sq = polygons.rasterize([np.array(square(0.25, 0.25, 0.75, 0.75))], size, size)
    assert sq.dtype == np.uint8 and set(np.unique(sq)) == {0, 1}
    assert abs(sq.sum() - (0.5 * size) ** 2) / (0.5 * size) ** 2 < 0.01
    rows, cols = np.nonzero(sq)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (128, 383, 128, 383)  # pixel-exact placement

    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    circle = np.stack([0.5 + 0.3 * np.cos(t), 0.45 + 0.3 * np.sin(t)], axis=1)
    disc = polygons.rasterize([circle], size, size)
    analytic = math.pi * (0.3 * size) ** 2
    assert abs(disc.sum() - analytic) / analytic < 0.01
    cy, cx = np.argwhere(disc).mean(axis=0)
    assert abs(cx - (0.5 * size - 0.5)) < 0.5 and abs(cy - (0.45 * size - 0.5)) < 0.5  # x is columns, y is rows

    # non-square output: x scales with width, y with height
    wide = polygons.rasterize([np.array(square(0.0, 0.0, 0.5, 1.0))], 100, 300)
    assert wide.shape == (100, 300) and wide.sum() == 150 * 100


def test_rasterize_union_of_overlapping_polygons():
    m = polygons.rasterize([np.array(square(0.0, 0.0, 0.5, 0.5)), np.array(square(0.25, 0.25, 0.75, 0.75))], 200, 200)
    assert m.sum() == 100 * 100 * 2 - 50 * 50


# --- RSNA -------------------------------------------------------------------------------------------------

def make_rsna(root: Path) -> Path:
    px = np.arange(64 * 64, dtype=np.int16).reshape(64, 64)
    labels = {
        "ID_00a1": {"any": 1, "epidural": 1},
        "ID_00b2": {},
        "ID_00c3": {"any": 1, "subdural": 1, "subarachnoid": 1},
        "ID_00d4": {},  # listed, but its file is missing
    }
    write_rsna_labels(root / "stage_2_train.csv", labels)
    write_sample_submission(root / "stage_2_sample_submission.csv", ["ID_0e01", "ID_0e02"])
    for i, image_id in enumerate(["ID_00a1", "ID_00b2", "ID_00c3"]):
        write_dicom(root / "stage_2_train" / f"{image_id}.dcm", px + i, z=5.0 * i)
    write_dicom(root / "stage_2_train" / "ID_0stray.dcm", px)          # in no CSV
    for image_id in ["ID_0e01", "ID_0e02"]:
        write_dicom(root / "stage_2_test" / f"{image_id}.dcm", px)
    write_dicom(root / "_truth" / "ID_0hidden.dcm", px)                # private folder: ignored
    write_rsna_labels(root / "_truth" / "test_labels.csv", {"ID_0e01": {}})
    write_results_csv(root / "Results_Subdural Hemorrhage Detection_2020.csv",
                      [("ID_00c3.jpg", region_cell(square(0.2, 0.2, 0.4, 0.4)), "")])
    return root


def test_rsna_reader(tmp_path, caplog):
    root = make_rsna(tmp_path / "rsna")
    assert readers.detect_layout(root) == "rsna"
    with caplog.at_level(logging.WARNING):
        ds = readers.read_dataset(root)
    assert_schema(ds)
    assert ds.layout == "rsna"
    assert ds.slices["image_id"].tolist() == ["ID_00a1", "ID_00b2", "ID_00c3", "ID_00d4", "ID_0e01", "ID_0e02"]
    assert ds.slices["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert (ds.slices["source"] == "dicom").all()
    assert labels_of(row_of(ds, "ID_00a1")) == {"any": 1, "epidural": 1, "intraparenchymal": 0,
                                                 "intraventricular": 0, "subarachnoid": 0, "subdural": 0}
    assert ds.slices.set_index("image_id")["label7"].iloc[:4].tolist() == ["epidural", "normal", "multi", "normal"]
    test = ds.slices[ds.slices["split"] == "test"]
    assert test[list(RSNA_LABELS) + ["label7"]].isna().all().all()
    assert row_of(ds, "ID_00a1")["path"] == "stage_2_train/ID_00a1.dcm"
    assert row_of(ds, "ID_0e02")["path"] == "stage_2_test/ID_0e02.dcm"
    assert row_of(ds, "ID_00d4")["path"] == "stage_2_train/ID_00d4.dcm"  # kept with its expected path
    assert not (root / "stage_2_train/ID_00d4.dcm").exists()
    assert ds.slices["has_mask"].tolist() == [False, False, True, False, False, False]
    assert ds.polygons["image_id"].tolist() == ["ID_00c3"]
    assert ds.slices["z"].isna().all()  # the reader never opens the DICOMs
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "1 DICOM files are in no label CSV" in messages and "ID_0stray" in messages
    assert "1 train ids have no DICOM file" in messages
    assert "hidden" not in messages

    sl = readers.load_slice(row_of(ds, "ID_00b2"), root)
    np.testing.assert_array_equal(sl.pixels, np.arange(64 * 64).reshape(64, 64) + 1)


def test_rsna_malformed_row_names_file_and_line(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    lines = (root / "stage_2_train.csv").read_text().splitlines()
    lines[4] = "ID_00a1_subdural,0,1"
    (root / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelFileError, match=r"stage_2_train\.csv:5: expected 2 fields"):
        readers.read_dataset(root)


def test_rsna_unknown_subtype_names_file_and_line(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    lines = (root / "stage_2_train.csv").read_text().splitlines()
    lines[3] = lines[3].replace("intraparenchymal", "intracerebral")
    (root / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelFileError, match=r"stage_2_train\.csv:4: unknown subtype 'intracerebral'"):
        readers.read_dataset(root)


def test_rsna_sample_submission_unknown_subtype(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    with open(root / "stage_2_sample_submission.csv", "a") as fh:
        fh.write("ID_0e03_hematoma,0.5\n")
    with pytest.raises(LabelFileError, match=r"stage_2_sample_submission\.csv:14: unknown subtype 'hematoma'"):
        readers.read_dataset(root)


# --- renders ----------------------------------------------------------------------------------------------

WINDOW_VALUES = {"brain_window": 40, "subdural_window": 120, "bone_window": 200, "brain_bone_window": 90,
                 "max_contrast_window": 250}


def make_renders(root: Path, with_patients: bool = False) -> Path:
    layout = {
        # class folder (misspelt / odd case on purpose) -> image -> window folders
        "epidural": {"ID_e1": ["brain_bone_window", "Subdural_Window", "max_contrast_window"]},
        "itroventricular": {"ID_v1": ["Brain_Window", "bone_window", "subdural_window", "max_contrast_window"],
                            "ID_v2": ["brain_window"]},
        "normal": {"ID_n1": ["brain_window", "subdural_window", "bone_window"],
                   "ID_n2": ["brain_window", "subdural_window", "bone_window"]},
        "multi": {"ID_m1": ["brain_window", "subdural_window", "bone_window"]},
    }
    for cls, imgs in layout.items():
        for image_id, windows in imgs.items():
            for w in windows:
                write_jpg(root / "renders" / cls / w / f"{image_id}.jpg", WINDOW_VALUES[w.lower()])
    header = ["Image", *RSNA_LABELS]
    write_csv(root / "hemorrhage-labels.csv", header, [
        ("ID_e1", 1, 1, 0, 0, 0, 0),
        ("ID_v1", 1, 0, 0, 1, 0, 0),
        ("ID_n1", 0, 0, 0, 0, 0, 0),
        ("ID_n2", 1, 0, 0, 0, 1, 0),   # in the normal folder, but the CSV says subarachnoid
        ("ID_m1", 1, 0, 1, 1, 0, 0),
        ("ID_zz", 0, 0, 0, 0, 0, 0),   # an RSNA image with no render: not part of this dataset
    ])                                  # ID_v2 has no row: labelled from its folder
    write_results_csv(root / "Results_Epidural Hemorrhage Detection_2020-11-16.csv", [
        ("ID_e1.jpg", region_cell(square(0.25, 0.25, 0.75, 0.75)), ""),
        ("ID_v1.jpg", "", region_cell(square(0.1, 0.1, 0.2, 0.2))),
        ("ID_n1.jpg", "", ""),
    ])
    if with_patients:
        write_csv(root / "patients.csv", ["image", "patient"],
                  [("ID_e1.jpg", "P1"), ("ID_v1", "P1"), ("ID_v2", "P2"), ("ID_n1", "P2"), ("ID_n2", "P3")])
    return root


def test_renders_reader(tmp_path, caplog):
    root = make_renders(tmp_path / "ref")
    assert readers.detect_layout(root) == "renders"
    with caplog.at_level(logging.WARNING):
        ds = readers.read_dataset(root)
    assert_schema(ds)
    assert ds.slices["image_id"].tolist() == ["ID_e1", "ID_m1", "ID_n1", "ID_n2", "ID_v1", "ID_v2"]
    assert (ds.slices["split"] == "train").all() and (ds.slices["source"] == "image").all()
    label7 = ds.slices.set_index("image_id")["label7"].to_dict()
    assert label7 == {"ID_e1": "epidural", "ID_m1": "multi", "ID_n1": "normal", "ID_n2": "subarachnoid",
                      "ID_v1": "intraventricular", "ID_v2": "intraventricular"}
    assert labels_of(row_of(ds, "ID_v2")) == {"any": 1, "epidural": 0, "intraparenchymal": 0,
                                               "intraventricular": 1, "subarachnoid": 0, "subdural": 0}

    # channel sources: brain <- brain_window else brain_bone_window, bone <- bone_window else brain_bone_window
    e1, v1 = row_of(ds, "ID_e1"), row_of(ds, "ID_v1")
    assert e1["path"] == "renders/epidural/brain_bone_window/ID_e1.jpg"
    assert json.loads(e1["extra_paths"]) == {"subdural_window": "renders/epidural/Subdural_Window/ID_e1.jpg",
                                             "max_contrast_window": "renders/epidural/max_contrast_window/ID_e1.jpg"}
    assert v1["path"] == "renders/itroventricular/Brain_Window/ID_v1.jpg"
    assert set(json.loads(v1["extra_paths"])) == {"bone_window", "subdural_window", "max_contrast_window"}

    assert ds.slices.set_index("image_id")["has_mask"].to_dict() == {
        "ID_e1": True, "ID_m1": False, "ID_n1": False, "ID_n2": False, "ID_v1": True, "ID_v2": False}
    # patient fallback: every image its own group
    assert (ds.slices["patient_id"] == ds.slices["image_id"]).all()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "1 images sit in a class folder that disagrees" in messages and "normal -> subarachnoid x1" in messages
    assert "1 images have no row in hemorrhage-labels.csv" in messages
    assert "folds can then only be grouped per image" in messages
    assert "1 rows have no region" in messages

    # loading: windows stacked as brain, subdural, bone
    sl = readers.load_slice(v1, root)
    assert sl.windows.shape == (64, 64, 3) and sl.windows.dtype == np.uint8
    np.testing.assert_allclose(sl.windows.reshape(-1, 3).mean(axis=0), [40, 120, 200], atol=2)
    sl = readers.load_slice(e1, root)   # brain_bone_window feeds brain and bone
    np.testing.assert_allclose(sl.windows.reshape(-1, 3).mean(axis=0), [90, 120, 90], atol=2)
    assert sl.notes == []
    sl = readers.load_slice(row_of(ds, "ID_v2"), root)   # brain only
    np.testing.assert_allclose(sl.windows.reshape(-1, 3).mean(axis=0), [40, 40, 40], atol=2)
    assert sl.notes == ["window_missing: no subdural window, brain window replicated",
                        "window_missing: no bone window, brain window replicated"]
    sl = images.load_image_slice(v1, root, channels=("bone", "brain"))
    np.testing.assert_allclose(sl.windows.reshape(-1, 2).mean(axis=0), [200, 40], atol=2)
    with pytest.raises(ValueError, match="cannot supply stroke"):
        images.load_image_slice(v1, root, channels=("brain", "stroke"))

    polys = polygons.polygons_by_image(ds.polygons)
    mask = readers.load_mask(e1, root, polys["ID_e1"], 64, 64)
    assert mask.sum() == 32 * 32


def test_renders_patients_csv_groups_images(tmp_path, caplog):
    root = make_renders(tmp_path / "ref", with_patients=True)
    with caplog.at_level(logging.WARNING):
        ds = readers.read_dataset(root)
    assert ds.slices.set_index("image_id")["patient_id"].to_dict() == {
        "ID_e1": "P1", "ID_m1": "ID_m1", "ID_n1": "P2", "ID_n2": "P3", "ID_v1": "P1", "ID_v2": "P2"}
    assert any("1 images are not in" in r.getMessage() for r in caplog.records)


def test_renders_unmatched_class_folder_is_an_error(tmp_path):
    root = make_renders(tmp_path / "ref")
    write_jpg(root / "renders" / "hematoma" / "brain_window" / "ID_h1.jpg", 10)
    with pytest.raises(ValueError, match=r"hematoma.*matches none of epidural"):
        readers.read_dataset(root)


def test_renders_unknown_window_folder_is_an_error(tmp_path):
    root = make_renders(tmp_path / "ref")
    write_jpg(root / "renders" / "normal" / "stroke_window" / "ID_n1.jpg", 10)
    with pytest.raises(ValueError, match=r"stroke_window.*expected one of brain_window"):
        readers.read_dataset(root)


def test_renders_multi_image_without_csv_row_is_an_error(tmp_path):
    root = make_renders(tmp_path / "ref")
    write_jpg(root / "renders" / "multi" / "brain_window" / "ID_m2.jpg", 10)
    with pytest.raises(LabelFileError, match=r"hemorrhage-labels\.csv.*'multi' folder have no row.*ID_m2"):
        readers.read_dataset(root)


def test_renders_malformed_polygon_names_file_and_line(tmp_path):
    root = make_renders(tmp_path / "ref")
    write_results_csv(root / "Results_Subdural Hemorrhage Detection_2020.csv", [
        ("ID_n1.jpg", "", ""), ("ID_n2.jpg", "[[{'x': 0.2, 'y': 0.1}, {'x': 'a', 'y': 0.3}, {'x': 0.1, 'y': 0.1}]]", "")])
    with pytest.raises(LabelFileError, match=r"Results_Subdural Hemorrhage Detection_2020\.csv:3: Correct Label"):
        readers.read_dataset(root)


def test_renders_class_folder_matching():
    assert renders.match_class_folder(Path("itroventricular")) == "intraventricular"
    assert renders.match_class_folder(Path("Subdural")) == "subdural"
    assert renders.match_class_folder(Path("intraparanchymal")) == "intraparenchymal"
    with pytest.raises(ValueError, match="'fracture'"):
        renders.match_class_folder(Path("fracture"))


def test_renders_without_label_csv_take_labels_from_folders(tmp_path, caplog):
    root = tmp_path / "ref"
    write_jpg(root / "renders" / "Epidural" / "brain_window" / "ID_1.jpg", 10)
    write_jpg(root / "renders" / "normal" / "brain_window" / "ID_2.jpg", 10)
    with caplog.at_level(logging.WARNING):
        ds = readers.read_dataset(root)
    assert ds.slices["label7"].tolist() == ["epidural", "normal"]
    assert labels_of(row_of(ds, "ID_1")) == {"any": 1, "epidural": 1, "intraparenchymal": 0,
                                              "intraventricular": 0, "subarachnoid": 0, "subdural": 0}
    assert any("no hemorrhage-labels.csv" in r.getMessage() for r in caplog.records)


# --- NIfTI ------------------------------------------------------------------------------------------------

def marked_volume(shape=(40, 40, 3)) -> np.ndarray:
    """HU volume in RAS storage (i -> patient right, j -> anterior, k -> superior) with a bright block at the
    right-anterior corner of every slice, so the oriented slice must show it top-left."""
    vol = np.full(shape, -1000, dtype=np.int16)
    vol[30:38, 32:38, :] = 70
    for k in range(shape[2]):
        vol[0, 0, k] = 100 + k  # tells slices apart
    return vol


def make_nifti(root: Path) -> Path:
    ras = marked_volume()
    # patient 49: RAS storage, 0.5 mm pixels, 5 mm slices
    ras_affine = np.diag([0.5, 0.5, 5.0, 1.0])
    ras_affine[:3, 3] = [-10.0, -10.0, 20.0]
    write_nifti(root / "ct_scans" / "049.nii", ras, ras_affine)
    write_nifti(root / "masks" / "049.nii", (ras == 70).astype(np.uint8), ras_affine)
    # patient 50: the same anatomy stored LPS-like and with rows/columns swapped, gzipped, 0.8 mm pixels
    lps = np.ascontiguousarray(ras[::-1, ::-1, :].transpose(1, 0, 2))    # axes: j (posterior), i (left), k
    lps_affine = np.array([[0, -0.8, 0, 15.0], [-0.8, 0, 0, 15.0], [0, 0, 5.0, -30.0], [0, 0, 0, 1]])
    write_nifti(root / "ct_scans" / "050.nii.gz", lps, lps_affine)
    write_nifti(root / "masks" / "050.nii.gz", (lps == 70).astype(np.uint8), lps_affine)
    # patient 51: labels only, the volume is missing
    write_csv(root / "hemorrhage_diagnosis_raw_ct.csv", CTICH_HEADER, [
        ctich_row(49, 1), ctich_row(49, 2, ["Intraparenchymal"]), ctich_row(49, 3, ["Subdural", "Epidural"], fracture=1),
        ctich_row(50, 1), ctich_row(50, 2), ctich_row(50, 3, ["Intraventricular"]),
        ctich_row(51, 1),
    ])
    return root


def test_nifti_reader_and_orientation(tmp_path, caplog):
    root = make_nifti(tmp_path / "ctich")
    assert readers.detect_layout(root) == "nifti"
    with caplog.at_level(logging.WARNING):
        ds = readers.read_dataset(root)
    assert_schema(ds)
    assert ds.slices["image_id"].tolist()[:4] == ["ID_ctich_049_001", "ID_ctich_049_002", "ID_ctich_049_003", "ID_ctich_050_001"]
    r = row_of(ds, "ID_ctich_049_003")
    assert (r["path"], r["mask_path"], r["frame"], r["instance_number"]) == ("ct_scans/049.nii", "masks/049.nii", 2, 3)
    assert r["patient_id"] == r["study_id"] == r["series_id"] == "ctich_049"
    assert r["label7"] == "multi" and r["any"] == 1 and r["subdural"] == 1 and r["epidural"] == 1
    assert row_of(ds, "ID_ctich_049_002")["label7"] == "intraparenchymal"
    assert row_of(ds, "ID_ctich_050_001")["label7"] == "normal"
    assert ds.slices.set_index("image_id")["z"].loc[["ID_ctich_049_001", "ID_ctich_049_003", "ID_ctich_050_002"]].tolist() == [20.0, 30.0, -25.0]
    assert row_of(ds, "ID_ctich_049_001")["pixel_spacing"] == 0.5 and row_of(ds, "ID_ctich_050_001")["pixel_spacing"] == pytest.approx(0.8)
    assert row_of(ds, "ID_ctich_049_001")["slice_thickness"] == 5.0
    missing = row_of(ds, "ID_ctich_051_001")
    assert missing["path"] == "ct_scans/051.nii" and not missing["has_mask"] and math.isnan(missing["z"])
    assert any("patient 51 has no volume" in r.getMessage() for r in caplog.records)

    for image_id in ("ID_ctich_049_002", "ID_ctich_050_002"):
        sl = readers.load_slice(row_of(ds, image_id), root)
        assert sl.pixels.dtype == np.int16 and sl.slope == 1.0 and sl.intercept == 0.0
        # the right-anterior block shows at the top-left, as on a radiological axial image
        rows, cols = np.nonzero(sl.pixels == 70)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 7, 2, 9), image_id
        assert sl.meta["z"] == row_of(ds, image_id)["z"]
        assert (sl.pixels == 101).sum() == 1  # frame 1 of the volume, not another slice
        mask = readers.load_mask(row_of(ds, image_id), root, [], 80, 80)  # resized x2, nearest neighbour
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        np.testing.assert_array_equal(mask[::2, ::2], (sl.pixels == 70).astype(np.uint8))

    with pytest.raises(BadInput, match="file_not_found"):
        readers.load_slice(missing, root)
    assert readers.load_mask(missing, root, [], 64, 64) is None


def test_nifti_inconsistent_row_names_file_and_line(tmp_path):
    root = make_nifti(tmp_path / "ctich")
    with open(root / "hemorrhage_diagnosis_raw_ct.csv", "a") as fh:
        fh.write("52,1,0,1,0,0,0,1,0\n")  # No_Hemorrhage=1 but Intraparenchymal=1
    with pytest.raises(LabelFileError, match=r"hemorrhage_diagnosis_raw_ct\.csv:9: No_Hemorrhage=1 contradicts .*Intraparenchymal"):
        readers.read_dataset(root)


def test_nifti_frame_outside_volume_is_bad_input(tmp_path):
    root = make_nifti(tmp_path / "ctich")
    row = pd.Series({"image_id": "ID_ctich_049_009", "source": "nifti", "path": "ct_scans/049.nii", "frame": 8})
    with pytest.raises(BadInput, match="frame 8 is outside the volume's 3 slices"):
        readers.load_slice(row, root)


# --- image folder -----------------------------------------------------------------------------------------

def make_image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    write_image(root / "slices" / "grey.png", rng.integers(0, 256, (37, 53), dtype=np.uint8))
    write_image(root / "slices" / "rgb.jpg", np.full((41, 29, 3), (200, 100, 50), dtype=np.uint8))
    rgba = np.zeros((30, 31, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 77, 10
    write_image(root / "slices" / "deep" / "ID_rgba.png", rgba)
    grey16 = np.full((20, 22), 257 * 100, dtype=np.uint16)
    grey16[0, 0] = 65535
    write_image(root / "slices" / "grey16.png", grey16)
    write_image(root / "slices" / "unlisted.png", np.zeros((8, 8), dtype=np.uint8))
    (root / "slices" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_csv(root / "train.csv", ["Image", *RSNA_LABELS], [
        ("grey.png", 0, 0, 0, 0, 0, 0), ("rgb", 1, 1, 0, 0, 0, 0), ("ID_rgba", 1, 0, 1, 1, 0, 0),
        ("grey16.png", 1, 0, 0, 0, 0, 1), ("broken.png", 0, 0, 0, 0, 0, 0), ("gone.png", 0, 0, 0, 0, 0, 0),
    ])
    return root


def test_images_reader_and_pixel_rules(tmp_path, caplog):
    root = make_image_folder(tmp_path / "pngs")
    assert readers.detect_layout(root) == "images"
    with caplog.at_level(logging.WARNING):
        ds = readers.read_dataset(root)
    assert_schema(ds)
    assert ds.slices["image_id"].tolist() == ["ID_grey", "ID_rgb", "ID_rgba", "ID_grey16", "ID_broken", "ID_gone"]
    assert ds.slices["label7"].tolist() == ["normal", "epidural", "multi", "subdural", "normal", "normal"]
    assert row_of(ds, "ID_rgba")["path"] == "slices/deep/ID_rgba.png"
    assert row_of(ds, "ID_gone")["path"] == ""
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "1 image files are not in train.csv" in messages and "unlisted.png" in messages
    assert "1 ids of train.csv have no image file" in messages

    grey = readers.load_slice(row_of(ds, "ID_grey"), root)
    assert grey.windows.shape == (37, 53, 3)
    assert (grey.windows[..., 0] == grey.windows[..., 2]).all() and "grey_to_rgb: grey replicated to 3 channels" in grey.notes
    rgb = readers.load_slice(row_of(ds, "ID_rgb"), root)
    assert rgb.windows.shape == (41, 29, 3)
    np.testing.assert_allclose(rgb.windows.reshape(-1, 3).mean(axis=0), [200, 100, 50], atol=3)
    rgba = readers.load_slice(row_of(ds, "ID_rgba"), root)
    assert rgba.windows.shape == (30, 31, 3) and (rgba.windows == [77, 0, 0]).all()
    assert rgba.notes == ["alpha_dropped: RGBA image"]
    assert readers.load_slice(row_of(ds, "ID_grey16"), root).notes[0] == "scaled_16_to_8_bit: round(v / 257)"
    g16 = readers.load_slice(row_of(ds, "ID_grey16"), root)
    assert g16.windows.shape == (20, 22, 3) and g16.windows[0, 0, 0] == 255 and (g16.windows[1:, 1:] == 100).all()
    with pytest.raises(BadInput, match="decode_error"):
        readers.load_slice(row_of(ds, "ID_broken"), root)
    with pytest.raises(BadInput, match="file_not_found"):
        readers.load_slice(row_of(ds, "ID_gone"), root)


def test_images_class_label_column(tmp_path):
    root = tmp_path / "pngs"
    for name in ("a", "b", "c"):
        write_image(root / f"{name}.png", np.zeros((16, 16), dtype=np.uint8))
    write_csv(root / "labels.csv", ["filename", "label"], [("a.png", "Subdural"), ("b.png", "normal"), ("c.png", "multi")])
    ds = readers.read_dataset(root)
    assert_schema(ds)
    a, b, c = (row_of(ds, f"ID_{n}") for n in "abc")
    assert labels_of(a) == {"any": 1, "epidural": 0, "intraparenchymal": 0, "intraventricular": 0, "subarachnoid": 0, "subdural": 1}
    assert labels_of(b) == dict.fromkeys(RSNA_LABELS, 0)
    assert c["label7"] == "multi" and c["any"] == 1 and pd.isna(c["subdural"])


def test_images_unknown_class_names_file_and_line(tmp_path):
    root = tmp_path / "pngs"
    write_image(root / "a.png", np.zeros((16, 16), dtype=np.uint8))
    write_csv(root / "labels.csv", ["image", "label"], [("a.png", "normal"), ("b.png", "bleed")])
    with pytest.raises(LabelFileError, match=r"labels\.csv:3: unknown class 'bleed'"):
        readers.read_dataset(root)


# --- detection --------------------------------------------------------------------------------------------

def test_detect_layout_and_find_dataset(tmp_path):
    inp = tmp_path / "input"
    assert readers.find_dataset(inp) is None                  # no folder
    inp.mkdir()
    assert readers.detect_layout(inp) is None
    assert readers.find_dataset(inp) is None                  # empty folder
    make_nifti(inp / "ctich")
    make_renders(inp / "_old_copy")                           # private folders are skipped
    assert readers.find_dataset(inp) == inp / "ctich"
    assert readers.find_dataset(inp / "ctich") == inp / "ctich"
    make_image_folder(inp / "pngs")
    with pytest.raises(ValueError, match=r"several datasets: .*ctich \(nifti\).*pngs \(images\).*--data"):
        readers.find_dataset(inp)
    with pytest.raises(ValueError, match="no dataset recognised"):
        readers.read_dataset(inp)
    with pytest.raises(ValueError, match="unknown layout 'dicomdir'"):
        readers.read_dataset(inp / "ctich", layout="dicomdir")



def test_dicoms_layout_finds_files_without_a_suffix_by_the_preamble(tmp_path):
    from ct_files import head_pixels

    from ichkit.readers import dicoms

    root = tmp_path / "export"
    px = head_pixels(64)
    write_dicom(root / "series1" / "IM0001", px)                # no suffix (a PACS / CD export)
    write_dicom(root / "series2" / "IM0001", px)                # the same name in another series
    write_dicom(root / "series2" / "1.2.840.99.7", px)          # named by its UID
    (root / "series2" / "DICOMDIR.txt").write_bytes(bytes(128) + b"DICM")  # another suffix: never opened
    (root / "README").write_text("exported from PACS")         # no suffix, no preamble: not a DICOM
    write_dicom(root / "_trash" / "IM0009", px)                 # private folder: skipped
    write_dicom(root / "series1" / ".IM0008", px)               # hidden file: skipped
    assert readers.detect_layout(root) == "dicoms"
    ds = readers.read_dataset(root)
    assert ds.layout == "dicoms" and (ds.slices["split"] == "test").all()
    assert dict(zip(ds.slices["image_id"], ds.slices["path"])) == {
        "ID_series1_IM0001": "series1/IM0001", "ID_series2_IM0001": "series2/IM0001",
        "ID_1.2.840.99.7": "series2/1.2.840.99.7"}
    loaded = readers.load_slice(ds.slices.iloc[0], root)
    assert loaded.pixels.shape == (64, 64)  # loads like any DICOM
    assert not dicoms.is_dicom_file(root / "README") and not dicoms.is_dicom_file(root / "missing")


def test_an_images_folder_with_binary_labels(tmp_path):
    from PIL import Image

    from ichkit import readers

    root = tmp_path / "pngs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 80), 40 * i, np.uint8)).save(root / f"{i:03d}.png")
    (root / "labels.csv").write_text("id,hemorrhage\n000.png,0\n001.png,1\n002.png,0\n")
    ds = readers.read_dataset(root)
    assert ds.layout == "images"
    t = ds.slices.set_index("image_id")
    assert t["any"].tolist() == [0, 1, 0] and t.loc["ID_001", ["epidural", "subdural"]].isna().all()


def test_a_nifti_slice_that_is_not_hounsfield_units_is_quarantined(tmp_path):
    import nibabel as nib

    from ichkit.readers.nifti import load_nifti_slice
    from ichkit.slicedata import BadInput

    volume = np.random.default_rng(0).normal(30, 10, (64, 64, 3)).astype(np.float32)
    volume[..., 1] = np.nan  # a slice of NaNs
    volume[..., 2] = 5e9  # not CT numbers
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "001.nii")
    row = pd.Series({"path": "001.nii", "frame": 0, "image_id": "ID_x"})
    assert load_nifti_slice(row, tmp_path).pixels.shape == (64, 64)
    for frame, problem in ((1, "NaN or infinite"), (2, "constant image|outside")):
        with pytest.raises(BadInput, match=problem):
            load_nifti_slice(pd.Series({"path": "001.nii", "frame": frame, "image_id": "ID_x"}), tmp_path)
