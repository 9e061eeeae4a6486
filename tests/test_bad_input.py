"""Bad input never crashes a run and nothing is lost: a seeded corpus of damaged and odd files of every
transfer syntax (and label files) with the outcome each must have, and seeded random corruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_corpus import SYNTAXES, encode, head, write_corpus
from ct_files import ct_dataset

from ichkit import readers
from ichkit.cache import ImageCache
from ichkit.config import load_config
from ichkit.labels import RSNA_LABELS, LabelFileError
from ichkit.prepare import prepare_dataset

SEED = 8


def cfg() -> dict:
    return load_config(overrides=["prepare.cls_size=32", "prepare.seg_size=32", "prepare.chunksize=4"])


def write_labels(root: Path, image_ids: list[str]) -> None:
    lines = ["ID,Label"] + [f"{i}_{s},0" for i in image_ids for s in RSNA_LABELS]
    (root / "stage_2_train.csv").write_text("\n".join(lines) + "\n")


def prepare_folder(root: Path, work: Path, workers: int = 1) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    summary = prepare_dataset(readers.read_dataset(root), work, cfg(), workers=workers, progress=False)
    cache = ImageCache(work)
    quarantine = pd.read_csv(cache.quarantine_path, keep_default_na=False, dtype=str)
    manifest = pd.read_parquet(cache.manifest_path)
    return summary, manifest, quarantine


def outcomes(manifest: pd.DataFrame, quarantine: pd.DataFrame) -> dict[str, str]:
    out = {i: "ok" for i in manifest["image_id"]}
    for image_id, reason in zip(quarantine["image_id"], quarantine["reason"]):
        assert image_id not in out, f"{image_id} is both cached and quarantined"
        out[image_id] = reason
    return out


def test_corpus_each_file_ends_as_the_table_says(tmp_path):
    root = tmp_path / "data"
    expected = write_corpus(root / "stage_2_train", SEED)
    assert len(set(expected.values()) - {"ok"}) >= 11 and len(expected) >= 30
    write_labels(root, sorted(expected))
    summary, manifest, quarantine = prepare_folder(root, tmp_path / "work")

    assert outcomes(manifest, quarantine) == expected
    assert summary["in_cache"] + summary["quarantined"] == summary["images_in"] == len(expected)
    cache = ImageCache(tmp_path / "work")
    for image_id, outcome in expected.items():
        assert cache.has("cls", image_id) == (outcome == "ok"), image_id
    details = dict(zip(quarantine["image_id"], quarantine["detail"]))
    assert "EOI" in details["ID_jpegls_cut_frame"] and "after the end" in details["ID_j2k_long_frame"]
    assert "RescaleSlope is 0" in details["ID_slope_zero"] and "Rows/Columns" in details["ID_sheared"]
    assert "ID_dup_a" in details["ID_dup_b_copy"] and "SOPInstanceUID" in details["ID_dup_c_same_uid"]
    assert details["ID_link_loop"] == "symbolic link loop"
    # every valid syntax decodes to the same HU as the uncompressed file would
    hu = {k: cache.load("hu", f"ID_{k}_ok") for k in SYNTAXES}
    assert all(np.abs(v.astype(int) - 40).min() < 30 for v in hu.values())

    # a re-run keeps every outcome and prepares nothing
    again, manifest2, quarantine2 = prepare_folder(root, tmp_path / "work")
    assert again["prepared_now"] == again["quarantined_now"] == 0
    assert outcomes(manifest2, quarantine2) == expected


def test_a_decoder_that_panics_quarantines_the_file_and_the_pool_goes_on(tmp_path, monkeypatch):
    # pyo3's PanicException derives from BaseException and does not pickle; the worker must turn it into a record
    import pydicom.dataset

    class PanicException(BaseException):
        pass

    real = pydicom.dataset.Dataset.pixel_array.fget

    def panicking(self):
        if str(self.get("PatientID")) == "ID_panic":
            raise PanicException("called `Result::unwrap()` on an `Err` value")
        return real(self)

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panicking))
    root = tmp_path / "data"
    folder = root / "stage_2_train"
    folder.mkdir(parents=True)
    for i, patient in enumerate(["ID_a", "ID_panic", "ID_b"]):
        ds = encode(ct_dataset(head(i), patient=patient), SYNTAXES["rle"])
        ds.save_as(folder / f"ID_{i}.dcm", enforce_file_format=True)
    write_labels(root, ["ID_0", "ID_1", "ID_2"])
    summary, manifest, quarantine = prepare_folder(root, tmp_path / "work")
    assert outcomes(manifest, quarantine) == {"ID_0": "ok", "ID_1": "decode_error", "ID_2": "ok"}
    assert "PanicException" in quarantine["detail"].iloc[0]


# label files: each error names the file and, where it is about one row, the line
LABEL_CASES = {
    "empty": (b"", r"stage_2_train\.csv:1: an empty file"),
    "lowercase_header": (b"id,label\nID_0_any,0\n", r"stage_2_train\.csv:1: header 'id,label'"),
    "trailing_comma": (b"ID,Label,\nID_0_any,0,\n", r"stage_2_train\.csv:1: header 'ID,Label,'"),
    "utf16_no_bom": ("ID,Label\nID_0_any,0\n".encode("utf-16-le"), r"stage_2_train\.csv:1: .*UTF-16 without a byte-order mark"),
    "bad_value": (b"ID,Label\nID_0_any,0\nID_0_epidural,2\n", r"stage_2_train\.csv:3: label value '2'"),
    "bad_id": (b"ID,Label\nID_0_any,0\nnonsense,0\n", r"stage_2_train\.csv:3: id 'nonsense'"),
    "header_only": (b"ID,Label\n", r"stage_2_train\.csv: no label rows"),
    "not_utf8": (b"ID,Label\nID_0_any,0\nID_\xff\xfe\xfa_any,0\n", r"stage_2_train\.csv:\d+: not valid utf-8-sig"),
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_a_bad_label_file_is_an_error_naming_file_and_line(tmp_path, case):
    content, message = LABEL_CASES[case]
    root = tmp_path / "data"
    (root / "stage_2_train").mkdir(parents=True)
    ct_dataset(head(0)).save_as(root / "stage_2_train" / "ID_0.dcm", enforce_file_format=True)
    (root / "stage_2_train.csv").write_bytes(content)
    (root / "stage_2_sample_submission.csv").write_text("ID,Label\nID_9_any,0.5\n")
    with pytest.raises(LabelFileError, match=message):
        readers.read_dataset(root, layout="rsna")


@pytest.mark.parametrize("bom", ["utf-8-sig", "utf-16"])
def test_label_files_with_a_byte_order_mark_are_read(tmp_path, bom):
    root = tmp_path / "data"
    (root / "stage_2_train").mkdir(parents=True)
    ct_dataset(head(0)).save_as(root / "stage_2_train" / "ID_0.dcm", enforce_file_format=True)
    text = "ID,Label\n" + "".join(f"ID_0_{s},{int(s in ('any', 'subdural'))}\n" for s in RSNA_LABELS)
    (root / "stage_2_train.csv").write_bytes(text.encode(bom))
    ds = readers.read_dataset(root)
    assert ds.slices.set_index("image_id").loc["ID_0", "label7"] == "subdural"


def corrupt(data: bytes, rng: np.random.Generator) -> tuple[bytes, int]:
    """Seeded damage: flip a few bits (kind 0), cut the file (1), or overwrite a run of bytes (2)."""
    buf = bytearray(data)
    kind = int(rng.integers(3))
    if kind == 0:
        for pos in rng.integers(0, len(buf), rng.integers(1, 8)):
            buf[pos] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        buf = buf[: int(rng.integers(1, len(buf)))]
    else:
        start = int(rng.integers(0, len(buf) - 16))
        buf[start : start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    return bytes(buf), kind


def test_random_corruption_never_crashes_and_accounts_for_every_file(tmp_path):
    rng = np.random.default_rng(SEED)
    root = tmp_path / "data"
    folder = root / "stage_2_train"
    folder.mkdir(parents=True)
    valid = {}
    for key, syntax in SYNTAXES.items():
        ds = encode(ct_dataset(head(len(valid))), syntax)
        ds.save_as(folder / "x.dcm", enforce_file_format=True)
        valid[key] = (folder / "x.dcm").read_bytes()
    (folder / "x.dcm").unlink()
    ids, cut = [], set()
    for key, data in valid.items():
        for i in range(16):
            image_id = f"ID_{key}_{i:02d}"
            damaged, kind = corrupt(data, rng)
            (folder / f"{image_id}.dcm").write_bytes(damaged)
            ids.append(image_id)
            if kind == 1 and len(damaged) < len(data) - 1:  # more than the even-length pad byte is gone
                cut.add(image_id)
    write_labels(root, ids)
    summary, manifest, quarantine = prepare_folder(root, tmp_path / "work", workers=2)

    result = outcomes(manifest, quarantine)
    assert set(result) == set(ids)
    assert summary["in_cache"] + summary["quarantined"] == len(ids)
    assert "unexpected" not in set(quarantine["reason"]), quarantine[quarantine["reason"] == "unexpected"]
    # a file cut anywhere loses pixel data (the last element): never cached, whatever the syntax
    assert len(cut) >= 10 and not cut & set(manifest["image_id"]), sorted(cut & set(manifest["image_id"]))
    # whatever was cached decodes to a plausible head: damage inside a compressed frame is never cached
    cache = ImageCache(tmp_path / "work")
    for image_id in manifest["image_id"]:
        if not image_id.startswith("ID_native"):
            assert np.median(cache.load("hu", image_id)[:2]) < -900, image_id


def test_dicoms_beside_an_unrecognised_label_csv_name_that_file(tmp_path):
    root = tmp_path / "data"
    (root / "stage_2_train").mkdir(parents=True)
    ct_dataset(head(0)).save_as(root / "stage_2_train" / "ID_0.dcm", enforce_file_format=True)
    (root / "labels.csv").write_text("id,label\nID_0_any,0\n")
    with pytest.raises(LabelFileError, match=r"labels\.csv:1: header 'id,label'"):
        readers.read_dataset(readers.find_dataset(root))
