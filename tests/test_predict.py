"""`ichkit predict`'s input side: what a bare folder, a NIfTI volume or an image folder becomes."""

from __future__ import annotations

import numpy as np
import pytest
from ct_files import head_pixels, write_ct

from ichkit.outputs.predict import PredictError, unlabelled_dataset


def test_bare_dicom_folder_is_all_test_with_ids_from_file_names(tmp_path):
    pixels = head_pixels(32)
    write_ct(tmp_path / "a" / "ID_one.dcm", pixels)
    write_ct(tmp_path / "b" / "scan2", pixels)  # no suffix: recognised by the DICM preamble
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "_private").mkdir()
    write_ct(tmp_path / "_private" / "ID_skip.dcm", pixels)
    ds = unlabelled_dataset(tmp_path)
    assert ds.layout == "dicoms"
    assert sorted(ds.slices["image_id"]) == ["ID_one", "ID_scan2"]
    assert set(ds.slices["split"]) == {"test"} and set(ds.slices["source"]) == {"dicom"}
    assert ds.slices["any"].isna().all()
    one = unlabelled_dataset(tmp_path / "b" / "scan2")  # one DICOM file
    assert one.root == tmp_path / "b" and one.slices["path"].tolist() == ["scan2"]


def test_nifti_volume_gives_one_test_slice_per_frame(tmp_path):
    import nibabel as nib

    volume = np.zeros((16, 16, 5), dtype=np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([0.5, 0.5, 5.0, 1.0])), tmp_path / "head.nii.gz")
    ds = unlabelled_dataset(tmp_path / "head.nii.gz")
    assert ds.slices["image_id"].tolist() == [f"ID_head_{f:03d}" for f in range(5)]
    assert ds.slices["frame"].tolist() == list(range(5)) and set(ds.slices["series_id"]) == {"head"}


def test_image_folder_and_an_empty_folder(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x1.png")
    ds = unlabelled_dataset(tmp_path)
    assert ds.layout == "image folder" and ds.slices["image_id"].tolist() == ["ID_x1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(PredictError, match=r"found no DICOM .* \(1 files looked at\)"):
        unlabelled_dataset(empty)
    with pytest.raises(PredictError, match="no such file or folder"):
        unlabelled_dataset(tmp_path / "missing")
