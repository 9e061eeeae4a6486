"""ichkit.prepare on DICOM folders written here: cache contents, quarantine, resume, settings, table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import MPEG2MPML, RLELossless
from ct_files import head_pixels, write_ct

from ichkit import prepare as prepare_mod
from ichkit.cache import ImageCache
from ichkit.config import load_config
from ichkit.prepare import PrepareError, prepare_dataset
from ichkit.readers.polygons import points_to_json
from ichkit.table import POLYGON_COLUMNS, Dataset, conform, read_table

CLS, SEG = 64, 128
GOOD = 8  # good train DICOMs; two more good ones are the test split


def small_cfg(**prepare) -> dict:
    cfg = load_config(overrides=[f"prepare.cls_size={CLS}", f"prepare.seg_size={SEG}"])
    cfg["prepare"].update(prepare)
    return cfg


def make_dataset(root: Path) -> Dataset:
    """An RSNA-like folder: GOOD train + 2 test DICOMs of one series, one of each bad kind, one mask."""
    folder = root / "stage_2_train"
    series = pydicom.uid.generate_uid()
    rows = []

    def add(image_id: str, split: str = "train", source: str = "dicom", **extra) -> None:
        sub = "stage_2_test" if split == "test" else "stage_2_train"
        rows.append({"image_id": image_id, "split": split, "source": source, "path": f"{sub}/{image_id}.dcm",
                     "any": 0 if split == "train" else pd.NA, "has_mask": False, **extra})

    for i in range(GOOD + 2):
        split = "test" if i >= GOOD else "train"
        image_id = f"ID_{i:02d}ok"
        write_ct(root / ("stage_2_test" if split == "test" else "stage_2_train") / f"{image_id}.dcm",
                 head_pixels(128, seed=i, dtype=np.uint16), patient="ID_pat1", series=series,
                 position=(-64.0, -64.0, 5.0 * i), instance=i + 1)
        add(image_id, split)
    # one slice whose file carries no patient id: the reader's value must survive
    write_ct(folder / "ID_nopatient.dcm", head_pixels(128, dtype=np.uint16), patient="")
    add("ID_nopatient", patient_id="ID_from_reader")

    (folder / "ID_notdicom.dcm").write_bytes(b"just some text, not a DICOM file\n" * 50)
    add("ID_notdicom")
    data = write_ct(folder / "ID_truncated.dcm", head_pixels(128)).read_bytes()
    (folder / "ID_truncated.dcm").write_bytes(data[: len(data) // 2])
    add("ID_truncated")
    ds = pydicom.dcmread(write_ct(folder / "ID_nopixels.dcm", head_pixels(128)))
    del ds.PixelData
    ds.save_as(folder / "ID_nopixels.dcm")
    add("ID_nopixels")
    ds = pydicom.dcmread(write_ct(folder / "ID_nodecoder.dcm", head_pixels(128), transfer_syntax=RLELossless))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(folder / "ID_nodecoder.dcm")
    add("ID_nodecoder")
    write_ct(folder / "ID_tiny.dcm", head_pixels(32))
    add("ID_tiny")
    add("ID_missing")  # listed, no file
    write_ct(folder / "ID_badsource.dcm", head_pixels(128))
    add("ID_badsource", source="hologram")  # a good file behind an error that is not a BadInput

    # a masked train slice: a square polygon in the middle quarter
    write_ct(folder / "ID_masked.dcm", head_pixels(128, seed=99, dtype=np.uint16), patient="ID_pat2")
    add("ID_masked", has_mask=True)
    square = np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])
    polygons = pd.DataFrame({"image_id": ["ID_masked"], "points": [points_to_json(square)], "source": ["test:1"]})
    return Dataset(root=root, layout="rsna", slices=conform(pd.DataFrame(rows)),
                   polygons=conform(polygons, POLYGON_COLUMNS))


BAD = {"ID_notdicom": "not_dicom", "ID_truncated": "truncated", "ID_nopixels": "no_pixel_data",
       "ID_nodecoder": "no_decoder", "ID_tiny": "odd_shape", "ID_missing": "file_not_found",
       "ID_badsource": "unexpected"}
N_OK = GOOD + 2 + 2  # + ID_nopatient + ID_masked


@pytest.fixture
def dataset(tmp_path) -> Dataset:
    return make_dataset(tmp_path / "data")


def test_prepare_caches_good_images_and_quarantines_each_bad_kind(dataset, tmp_path, capsys):
    work = tmp_path / "work"
    summary = prepare_dataset(dataset, work, small_cfg(), workers=1)

    assert summary["images_in"] == N_OK + len(BAD)
    assert summary["prepared_now"] == summary["in_cache"] == N_OK
    assert summary["quarantined"] == len(BAD)
    assert summary["quarantined_by_reason"] == {r: 1 for r in BAD.values()}
    out = capsys.readouterr().out
    assert f"{N_OK} in the cache + {len(BAD)} quarantined = {N_OK + len(BAD)}" in out

    cache = ImageCache(work)
    quarantine = pd.read_csv(cache.quarantine_path, keep_default_na=False)
    assert list(quarantine.columns) == ["image_id", "path", "reason", "detail"]
    assert dict(zip(quarantine["image_id"], quarantine["reason"])) == BAD
    assert quarantine.set_index("image_id").loc["ID_nodecoder", "detail"].startswith("MPEG2")
    assert "hologram" in quarantine.set_index("image_id").loc["ID_badsource", "detail"]

    manifest = pd.read_parquet(cache.manifest_path)
    assert sorted(manifest["image_id"]) == sorted(set(dataset.slices["image_id"]) - set(BAD))
    assert (manifest[["height", "width"]] == 128).all().all()

    for image_id in manifest["image_id"]:
        cls, hu = cache.load("cls", image_id), cache.load("hu", image_id)
        assert cls.shape == (CLS, CLS, 3) and cls.dtype == np.uint8
        assert hu.shape == (CLS, CLS) and hu.dtype == np.int16
    for image_id in BAD:
        assert not cache.has("cls", image_id)
    # seg_cache masked_and_test: the two test slices and the masked one, nothing else
    seg_ids = {p.stem for p in (cache.root / "seg").rglob("*.npy")}
    assert seg_ids == {"ID_08ok", "ID_09ok", "ID_masked"}
    assert cache.load("seg", "ID_08ok").shape == (SEG, SEG, 3)
    mask = cache.load("mask", "ID_masked")
    assert mask.shape == (SEG, SEG) and mask.sum() == (SEG // 2) ** 2 and mask[SEG // 2, SEG // 2] == 1


def test_cached_values_are_the_windowed_dicom(dataset, tmp_path):
    from ichkit.dicom import load_dicom
    from ichkit.windows import apply_windows, hu_map, resize

    work = tmp_path / "work"
    cfg = small_cfg()
    prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    sl = load_dicom(dataset.root / "stage_2_train" / "ID_03ok.dcm")
    windows = [tuple(w) for w in cfg["prepare"]["windows"].values()]
    np.testing.assert_array_equal(ImageCache(work).load("cls", "ID_03ok"), resize(apply_windows(sl, windows), CLS))
    hu = ImageCache(work).load("hu", "ID_03ok")
    np.testing.assert_array_equal(hu, hu_map(sl, CLS))
    # the phantom head: brain ~40 HU in the middle, air -1000 in the corner
    assert abs(int(hu[CLS // 2, CLS // 2]) - 40) <= 25 and hu[0, 0] <= -990


def test_table_gets_meta_from_the_files_and_a_status(dataset, tmp_path):
    work = tmp_path / "work"
    prepare_dataset(dataset, work, small_cfg(), workers=1, progress=False)
    table = read_table(work).slices.set_index("image_id")
    assert table.loc["ID_03ok", "patient_id"] == "ID_pat1"
    assert table.loc["ID_03ok", "z"] == 15.0 and table.loc["ID_03ok", "instance_number"] == 4
    assert table.loc["ID_03ok", "pixel_spacing"] == pytest.approx(0.48828125)
    assert table.loc["ID_nopatient", "patient_id"] == "ID_from_reader"
    assert (table.loc[list(BAD), "status"] == "quarantined").all()
    assert (table.drop(index=list(BAD))["status"] == "ok").all()
    assert json.loads((work / "table.json").read_text())["root"] == str(dataset.root.resolve())


def test_rerun_skips_everything_and_a_deleted_file_is_prepared_again(dataset, tmp_path):
    work, cfg = tmp_path / "work", small_cfg()
    prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    again = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert again["prepared_now"] == 0 and again["quarantined_now"] == 0
    assert again["skipped_done"] == N_OK and again["skipped_quarantined"] == len(BAD)

    cache = ImageCache(work)
    before = cache.path("cls", "ID_01ok").stat().st_mtime_ns
    cache.path("hu", "ID_05ok").unlink()
    third = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert third["prepared_now"] == 1 and third["skipped_done"] == N_OK - 1
    assert cache.has("hu", "ID_05ok")
    assert cache.path("cls", "ID_01ok").stat().st_mtime_ns == before


def test_interrupted_run_resumes_from_the_manifest_log(dataset, tmp_path, monkeypatch):
    work, cfg = tmp_path / "work", small_cfg(chunksize=4)
    real_append = prepare_mod._Records.append
    calls = []

    def append_then_die(self, ok, bad):
        real_append(self, ok, bad)
        calls.append(len(ok) + len(bad))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod._Records, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert (work / "cache" / "manifest.jsonl").is_file() and not (work / "cache" / "manifest.parquet").exists()
    monkeypatch.setattr(prepare_mod._Records, "append", real_append)

    resumed = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert resumed["skipped_done"] + resumed["skipped_quarantined"] == sum(calls) == 8
    assert resumed["prepared_now"] + resumed["quarantined_now"] == N_OK + len(BAD) - 8
    assert resumed["in_cache"] == N_OK and resumed["quarantined"] == len(BAD)
    assert not (work / "cache" / "manifest.jsonl").exists()


def test_a_cached_id_quarantined_by_a_stopped_run_is_counted_once(dataset, tmp_path, monkeypatch):
    # ID_05ok is cached, then loses a cache file and its DICOM breaks; the run that quarantines it stops
    # before folding the log into the parquet, which still lists the id as prepared
    work, cfg = tmp_path / "work", small_cfg(chunksize=100)
    prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    cache = ImageCache(work)
    cache.path("hu", "ID_05ok").unlink()
    (dataset.root / "stage_2_train" / "ID_05ok.dcm").write_bytes(b"not a DICOM file any more\n" * 20)
    real_append = prepare_mod._Records.append

    def append_then_die(self, ok, bad):
        real_append(self, ok, bad)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod._Records, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    monkeypatch.setattr(prepare_mod._Records, "append", real_append)

    summary = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert summary["in_cache"] == N_OK - 1 and summary["quarantined"] == len(BAD) + 1
    assert summary["in_cache"] + summary["quarantined"] == summary["images_in"]
    assert "ID_05ok" not in set(pd.read_parquet(cache.manifest_path)["image_id"])
    assert read_table(work).slices.set_index("image_id").loc["ID_05ok", "status"] == "quarantined"


def test_changed_settings_need_force_which_rebuilds(dataset, tmp_path):
    work = tmp_path / "work"
    prepare_dataset(dataset, work, small_cfg(), workers=1, progress=False)
    changed = small_cfg(windows={"brain": [40, 80], "subdural": [75, 215], "bone": [600, 2800]})
    with pytest.raises(PrepareError, match="--force") as exc:
        prepare_dataset(dataset, work, changed, workers=1, progress=False)
    assert "windows" in str(exc.value)
    rebuilt = prepare_dataset(dataset, work, changed, workers=1, force=True, progress=False)
    assert rebuilt["prepared_now"] == N_OK and rebuilt["quarantined_now"] == len(BAD)
    assert json.loads((work / "cache" / "cache.json").read_text())["windows"]["subdural"] == [75.0, 215.0]


def test_refuses_a_work_folder_of_another_dataset(dataset, tmp_path):
    work = tmp_path / "work"
    prepare_dataset(dataset, work, small_cfg(), workers=1, progress=False)
    other = make_dataset(tmp_path / "other")
    with pytest.raises(PrepareError, match="--work"):
        prepare_dataset(other, work, small_cfg(), workers=1, progress=False)


def test_process_pool_gives_the_same_cache(dataset, tmp_path):
    one, two = tmp_path / "w1", tmp_path / "w2"
    prepare_dataset(dataset, one, small_cfg(seg_cache="none"), workers=1, progress=False)
    summary = prepare_dataset(dataset, two, small_cfg(seg_cache="none", chunksize=3), workers=2, progress=False)
    assert summary["workers"] == 2 and summary["in_cache"] == N_OK and summary["quarantined"] == len(BAD)
    for image_id in ("ID_00ok", "ID_09ok", "ID_masked"):
        for kind in ("cls", "hu"):
            np.testing.assert_array_equal(ImageCache(one).load(kind, image_id), ImageCache(two).load(kind, image_id))
    assert not (two / "cache" / "seg").exists()


def test_cli_without_a_dataset_says_what_to_do(tmp_path, capsys):
    from ichkit.cli import main

    (tmp_path / "empty").mkdir()
    work = ["--set", f"paths.work={tmp_path / 'work'}"]
    assert main(["prepare", "--data", str(tmp_path / "empty"), *work]) == 1
    err = capsys.readouterr().err
    assert "ichkit prepare: error: no dataset found in" in err and "it is empty" in err
    assert "rsna: an ID,Label CSV" in err
    assert "pass --data" not in err  # it was passed
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert main(["prepare", *work, "--set", f"paths.input={tmp_path / 'empty'}"]) == 1
    err = capsys.readouterr().err
    assert "it holds 1 .txt" in err and "ichkit demo-data" in err and "--data" in err


def test_a_bare_dicom_folder_is_an_inference_dataset(tmp_path):
    from ichkit import readers

    root = tmp_path / "export"
    for series in ("s1", "s2"):
        for i in range(2):
            write_ct(root / series / f"IM{i:04d}.dcm", head_pixels(128, seed=i), patient="")
    write_ct(root / "s1" / "ID_unique.dcm", head_pixels(128))
    ds = readers.read_dataset(readers.find_dataset(root))
    assert ds.layout == "dicoms" and (ds.slices["split"] == "test").all() and len(ds.slices) == 5
    assert set(ds.slices["image_id"]) == {"ID_s1_IM0000", "ID_s1_IM0001", "ID_s2_IM0000", "ID_s2_IM0001", "ID_unique"}
    summary = prepare_dataset(ds, tmp_path / "work", small_cfg(), workers=1, progress=False)
    assert summary["in_cache"] == 5

    from ichkit.folds import FoldsError, make_folds

    with pytest.raises(FoldsError, match="no labelled images.*5 .*test split"):
        make_folds(read_table(tmp_path / "work").slices, 2, 0)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from ichkit.phantom import generate_dataset

    out = tmp_path_factory.mktemp("phantom") / "rsna"
    generate_dataset(out, patients=2, seed=11, corrupt=3, workers=1, progress=False)
    return out


def test_end_to_end_on_the_phantom_through_the_cli(phantom, tmp_path, capsys):
    from ichkit.cli import main

    demo = json.loads((phantom / "demo.json").read_text())
    work = tmp_path / "work"
    assert main(["prepare", "--data", str(phantom.parent), "--work", str(work), "--workers", "1",
                 "--set", f"prepare.cls_size={CLS}", "--set", f"prepare.seg_size={SEG}"]) == 0
    out = capsys.readouterr().out

    table = read_table(work).slices
    n = sum(demo["slices"].values())
    corrupt = {c["image_id"]: c["kind"] for c in demo["corrupt"]}
    assert len(table) == n and len(corrupt) == 3
    # the phantom's corruptions carry the names of the quarantine reasons they must produce
    quarantine = pd.read_csv(ImageCache(work).quarantine_path, keep_default_na=False)
    assert dict(zip(quarantine["image_id"], quarantine["reason"])) == corrupt
    assert set(table.loc[table["status"] == "quarantined", "image_id"]) == set(corrupt)
    assert (table.loc[~table["image_id"].isin(corrupt), "status"] == "ok").all()
    assert f"{n - 3} in the cache + 3 quarantined = {n}" in out

    # every broken-intercept file was fixed, and only those
    manifest = pd.read_parquet(ImageCache(work).manifest_path).set_index("image_id")
    fixed = set(manifest.index[manifest["notes"].str.contains("bits_stored_12_fix")])
    assert fixed == set(demo["variants"]["bad_intercept"]["image_ids"]) - set(corrupt)
    # with the fix, air reads -1000 HU like the other encodings' air/padding (read naively: +3096)
    cache = ImageCache(work)
    for image_id in sorted(fixed)[:3] + sorted(manifest.index.difference(list(fixed)))[:3]:
        assert -1024 <= np.median(cache.load("hu", image_id)[:4, :]) <= -990
    # z comes from the DICOM geometry and orders each series
    ok = table[table["status"] == "ok"]
    assert ok["z"].notna().all() and ok["patient_id"].str.startswith("ID_").all()
    masked = ok[ok["has_mask"]]
    assert len(masked) and all(cache.has("mask", i) for i in masked["image_id"])


def test_a_cached_and_quarantined_id_counts_once_as_cached(dataset, tmp_path):
    # a stopped run left ID_05ok in quarantine.csv while its cache files are complete: cached wins, once
    work, cfg = tmp_path / "work", small_cfg()
    prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    cache = ImageCache(work)
    with open(cache.quarantine_path, "a") as fh:
        fh.write("ID_05ok,somewhere,decode_error,from a stopped run\n")
    summary = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert summary["prepared_now"] == 0 and summary["skipped_done"] == N_OK
    assert summary["in_cache"] == N_OK and summary["quarantined"] == len(BAD)
    assert "ID_05ok" not in set(pd.read_csv(cache.quarantine_path)["image_id"])
    assert read_table(work).slices.set_index("image_id").loc["ID_05ok", "status"] == "ok"


def test_a_damaged_cache_file_names_the_image_and_is_prepared_again(dataset, tmp_path):
    from ichkit.cache import CacheError

    work, cfg = tmp_path / "work", small_cfg()
    prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    cache = ImageCache(work)
    path = cache.path("cls", "ID_02ok")
    good = cache.load("cls", "ID_02ok")
    path.write_bytes(path.read_bytes()[:-100])  # a disk that filled up mid-write
    with pytest.raises(CacheError, match=r"ID_02ok: damaged cache file .*ID_02ok\.npy: .*truncated"):
        cache.load("cls", "ID_02ok")
    np.save(cache.path("hu", "ID_03ok"), np.zeros((CLS + 1, CLS), np.int16))  # whole, but the wrong shape
    with pytest.raises(CacheError, match="ID_03ok.*cache settings say int16"):
        cache.load("hu", "ID_03ok")
    again = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert again["prepared_now"] == 2
    np.testing.assert_array_equal(cache.load("cls", "ID_02ok"), good)
    assert cache.load("hu", "ID_03ok").shape == (CLS, CLS)


SLOW_WORKERS = '''
import os, time
from pathlib import Path
import ichkit.prepare as p
_real = p._prepare_one
def _slow(row, polygons):
    Path(os.environ["PIDS"], str(os.getpid())).touch()
    time.sleep(0.4)
    return _real(row, polygons)
p._prepare_one = _slow
'''
RUN_PREPARE = '''
import pickle, sys
from ichkit.prepare import prepare_dataset
ds, work, cfg = pickle.load(open(sys.argv[1], "rb"))
prepare_dataset(ds, work, cfg, workers=2, progress=False)
'''


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM"])
def test_a_killed_multi_worker_run_leaves_no_workers_and_resumes(dataset, tmp_path, signame):
    import os
    import pickle
    import signal
    import subprocess
    import sys
    import time

    work, cfg = tmp_path / "work", small_cfg(chunksize=1, seg_cache="none")
    hook, pids = tmp_path / "hook", tmp_path / "pids"
    hook.mkdir(), pids.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_WORKERS)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((dataset, work, cfg)))
    env = {**os.environ, "PIDS": str(pids),
           "PYTHONPATH": os.pathsep.join([str(hook), str(Path(prepare_mod.__file__).parents[1])])}
    proc = subprocess.Popen([sys.executable, "-c", RUN_PREPARE, str(tmp_path / "job.pkl")], env=env,
                            stderr=subprocess.PIPE, text=True)
    log = work / "cache" / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.1)
    workers = {int(p.name) for p in pids.iterdir()} - {proc.pid}
    assert len(workers) == 2
    proc.send_signal(getattr(signal, signame))
    code = proc.wait(30)
    assert code != 0
    if signame == "SIGTERM":  # stopped like Ctrl-C: a KeyboardInterrupt, not a traceback of a crash
        assert "KeyboardInterrupt" in proc.stderr.read()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "workers outlived their parent"

    # a half-written last line, as a kill during the write leaves it
    with open(log, "a") as fh:
        fh.write('{"image_id": "ID_07ok", "source": "dic')
    resumed = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert resumed["skipped_done"] >= 2 and resumed["prepared_now"] > 0
    assert resumed["in_cache"] == N_OK and resumed["quarantined"] == len(BAD)
    assert resumed["in_cache"] + resumed["quarantined"] == resumed["images_in"]


def test_an_unwritable_work_folder_names_the_path_and_the_cause(dataset, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o500)
    try:
        with pytest.raises(PrepareError, match=rf"cannot write .*{work.name}.*permission denied"):
            prepare_dataset(dataset, work, small_cfg(), workers=1, progress=False)
    finally:
        work.chmod(0o700)


def test_a_full_disk_stops_with_the_path_and_a_rerun_completes(dataset, tmp_path, monkeypatch):
    import errno

    work, cfg = tmp_path / "work", small_cfg(chunksize=2)
    real_save = ImageCache.save
    saved = []

    def save_until_full(self, kind, image_id, array):
        if len(saved) >= 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path(kind, image_id)))
        saved.append(image_id)
        return real_save(self, kind, image_id, array)

    monkeypatch.setattr(ImageCache, "save", save_until_full)
    with pytest.raises(PrepareError, match=r"cannot write .*\.npy: no space left on the device"):
        prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    monkeypatch.setattr(ImageCache, "save", real_save)
    summary = prepare_dataset(dataset, work, cfg, workers=1, progress=False)
    assert summary["in_cache"] == N_OK and summary["quarantined"] == len(BAD)


def test_a_non_square_image_is_letterboxed_not_squashed(tmp_path):
    from ichkit.windows import resize

    img = np.zeros((64, 128), np.uint8)
    img[16:48, 48:80] = 200  # a 32x32 square in the middle
    out = resize(img, 32)
    assert out.shape == (32, 32)
    rows, cols = np.nonzero(out > 100)
    assert rows.max() - rows.min() == cols.max() - cols.min() == 7  # still square: 32 px -> 8 px
    assert (out[:8] == 0).all() and (out[-8:] == 0).all()  # the padding above and below


def test_images_without_patient_id_are_grouped_by_patients_csv_study_series_then_image(tmp_path):
    root = tmp_path / "data"
    folder = root / "stage_2_train"
    rows = []
    for i, (study, series) in enumerate([("1.2.3", "1.2.3.1"), ("1.2.3", "1.2.3.2"), (None, "1.2.9"), (None, None), ("", "")]):
        ds = pydicom.dcmread(write_ct(folder / f"ID_n{i}.dcm", head_pixels(128, seed=i), patient="",
                                      study=study or None, series=series or None))
        for tag, value in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
            if not value:
                del ds[tag]
        ds.save_as(folder / f"ID_n{i}.dcm")
        rows.append({"image_id": f"ID_n{i}", "split": "train", "source": "dicom", "path": f"stage_2_train/ID_n{i}.dcm",
                     "has_mask": False})
    (root / "patients.csv").write_text("image,patient\nID_n4,P4\n")
    ds = Dataset(root=root, layout="rsna", slices=conform(pd.DataFrame(rows)))
    prepare_dataset(ds, tmp_path / "work", small_cfg(), workers=1, progress=False)
    table = read_table(tmp_path / "work").slices.set_index("image_id")
    assert table["patient_id"].to_dict() == {"ID_n0": "study:1.2.3", "ID_n1": "study:1.2.3", "ID_n2": "series:1.2.9",
                                             "ID_n3": "ID_n3", "ID_n4": "P4"}
    assert table["patient_source"].to_dict() == {"ID_n0": "study", "ID_n1": "study", "ID_n2": "series",
                                                 "ID_n3": "image", "ID_n4": "patients.csv"}


def test_mask_files_beside_the_slices_are_cached_and_size_checked(tmp_path):
    import nibabel as nib
    from PIL import Image

    from ichkit import readers

    root = tmp_path / "data"
    ids = ["ID_m0", "ID_m1", "ID_m2", "ID_m3", "ID_m4"]
    for i, image_id in enumerate(ids):
        write_ct(root / "stage_2_train" / f"{image_id}.dcm", head_pixels(128, seed=i))
    (root / "stage_2_train.csv").write_text("ID,Label\n" + "".join(f"{i}_{s},0\n" for i in ids for s in
                                            ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")))
    square = np.zeros((128, 128), np.uint8)
    square[32:96, 32:96] = 1
    (root / "masks").mkdir()
    Image.fromarray(square * 255).save(root / "masks" / "ID_m0.png")
    nib.save(nib.Nifti1Image(square[:, :, None].astype(np.uint8), np.eye(4)), root / "masks" / "ID_m1.nii.gz")
    write_ct(root / "masks" / "ID_m2.dcm", square.astype(np.uint16) * 7, intercept="0")
    Image.fromarray(np.zeros((100, 128), np.uint8)).save(root / "masks" / "ID_m3.png")  # the wrong size
    ds = readers.read_dataset(root)
    assert ds.slices.set_index("image_id")["has_mask"].to_dict() == {"ID_m0": True, "ID_m1": True, "ID_m2": True,
                                                                      "ID_m3": True, "ID_m4": False}
    summary = prepare_dataset(ds, tmp_path / "work", small_cfg(), workers=1, progress=False)
    cache = ImageCache(tmp_path / "work")
    for image_id in ("ID_m0", "ID_m1", "ID_m2"):
        mask = cache.load("mask", image_id)
        assert mask.shape == (SEG, SEG) and mask.sum() == (SEG // 2) ** 2, image_id
    quarantine = pd.read_csv(cache.quarantine_path).set_index("image_id")
    assert quarantine.loc["ID_m3", "reason"] == "odd_shape" and "128x100" in quarantine.loc["ID_m3", "detail"]
    assert summary["in_cache"] == 4


def test_thin_series_are_averaged_into_slabs_with_tilt_and_label_union(tmp_path):
    from ichkit import readers
    from ichkit.slabs import IN_SLAB, series_spacing

    root = tmp_path / "data"
    series = pydicom.uid.generate_uid()
    tilt = np.deg2rad(15)  # gantry tilt: the column direction leaves the axial plane
    orientation = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]
    normal = np.cross(orientation[:3], orientation[3:])
    ids = [f"ID_t{i:02d}" for i in range(8)]
    for i, image_id in enumerate(ids):  # 1.25 mm along the tilted normal -> 4 slices per 5 mm slab
        position = tuple(np.array([-64.0, -64.0, 0.0]) + 1.25 * i * normal)
        pixels = head_pixels(128, seed=i).astype(np.uint16) + np.uint16(10 * i)
        write_ct(root / "stage_2_train" / f"{image_id}.dcm", pixels, series=series, position=position,
                 orientation=orientation, thickness="1.25", patient="ID_pt")
    labels = ["ID,Label"]
    for image_id in ids:
        bleed = image_id == "ID_t05"
        labels += [f"{image_id}_{s},{int(bleed and s in ('any', 'subdural'))}" for s in
                   ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")]
    (root / "stage_2_train.csv").write_text("\n".join(labels) + "\n")
    cfg = small_cfg(slab_mm=5)
    summary = prepare_dataset(readers.read_dataset(root), tmp_path / "work", cfg, workers=1, progress=False)
    assert summary["images_in"] == 8 and summary["in_cache"] == 8 and summary["slabs"] == 2

    table = read_table(tmp_path / "work").slices.set_index("image_id")
    assert series_spacing(table.loc[ids, "z"].tolist()) == pytest.approx(1.25)
    assert (table.loc[ids, "status"] == IN_SLAB).all()
    slabs = table[table["source"] == "slab"]
    assert list(slabs.index) == ["ID_t00_slab5mm", "ID_t04_slab5mm"] and (slabs["status"] == "ok").all()
    assert slabs.loc["ID_t00_slab5mm", "label7"] == "normal" and slabs.loc["ID_t04_slab5mm", "label7"] == "subdural"
    cache = ImageCache(tmp_path / "work")
    members = np.mean([cache.load("hu", i).astype(np.float64) for i in ids[4:]], axis=0)
    np.testing.assert_allclose(cache.load("hu", "ID_t04_slab5mm"), members, atol=1.01)
    again = prepare_dataset(readers.read_dataset(root), tmp_path / "work", cfg, workers=1, progress=False)
    assert again["prepared_now"] == 0 and again["slabs"] == 2


CRASHING_DECODER = '''
import os, signal
import ichkit.prepare as p
_real = p._prepare_one
def _crash(row, polygons):
    if row["image_id"] == "ID_04ok":
        os.kill(os.getpid(), signal.SIGSEGV)  # what a crash inside a compiled decoder does to the worker
    return _real(row, polygons)
p._prepare_one = _crash
'''


def test_a_decoder_crashing_its_worker_quarantines_that_image_only(dataset, tmp_path):
    import os
    import pickle
    import subprocess
    import sys

    work, cfg = tmp_path / "work", small_cfg(chunksize=3, seg_cache="none")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASHING_DECODER)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((dataset, work, cfg)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(Path(prepare_mod.__file__).parents[1])])}
    done = subprocess.run([sys.executable, "-c", RUN_PREPARE, str(tmp_path / "job.pkl")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    quarantine = pd.read_csv(ImageCache(work).quarantine_path).set_index("image_id")
    assert quarantine.loc["ID_04ok", "reason"] == "decode_error" and "worker process died" in quarantine.loc["ID_04ok", "detail"]
    assert set(quarantine.index) == set(BAD) | {"ID_04ok"}
    assert len(pd.read_parquet(ImageCache(work).manifest_path)) == N_OK - 1


def test_a_read_only_work_folder_names_the_path_and_the_cause(dataset, tmp_path, monkeypatch):
    import errno

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    with pytest.raises(PrepareError, match=r"cannot write .*cache\.json: the file system is read-only"):
        prepare_dataset(dataset, tmp_path / "work", small_cfg(), workers=1, progress=False)
