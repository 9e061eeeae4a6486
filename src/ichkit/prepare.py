"""Stage `prepare`: every input image -> windows -> the on-disk cache, plus the slice table.

Per image (in worker processes, chunked): `readers.load_slice` -> `windows.apply_windows` -> resize to
`cls_size` -> cache `cls` (uint8 HxWx3) and `hu` (int16 HU map); at `seg_size` the `seg` image per
`prepare.seg_cache` and, where the table says `has_mask`, the ground-truth `mask`.

An input that cannot be prepared (a `BadInput`, or any other exception from that one file) goes to
`cache/quarantine.csv` with a reason and never stops the run. Progress is recorded per chunk in an
append-only `cache/manifest.jsonl`, consolidated into `cache/manifest.parquet` at the end, so an
interrupted run resumes where it stopped: a re-run skips ids already in the manifest whose files exist,
and ids already quarantined (unless --force). `cache/cache.json` remembers the settings the cache was
built with; different settings stop the run until --force rebuilds it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ichkit.cache import KINDS, ImageCache
from ichkit.files import atomic_path
from ichkit.slicedata import BadInput
from ichkit.errors import IchkitError

if TYPE_CHECKING:  # pandas is imported where it is used, so that `ichkit --help` stays fast
    import pandas as pd

    from ichkit.table import Dataset

MANIFEST_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "source": "string",
    "height": "int64",           # original image size, before resizing
    "width": "int64",
    "dtype": "string",           # stored pixel dtype ("uint8 render" for rendered images)
    "slope": "float64",
    "intercept": "float64",
    "notes": "string",           # fixes applied while loading, "; "-separated
    "patient_id": "string",
    "study_id": "string",
    "series_id": "string",
    "z": "float64",
    "instance_number": "Int64",
    "pixel_spacing": "float64",
    "slice_thickness": "float64",
    "seg": "bool",               # a seg image was cached
    "mask": "bool",              # a mask was cached
}
QUARANTINE_COLUMNS = ["image_id", "path", "reason", "detail"]
# table columns taken from what the file itself says, where it says anything
META_COLUMNS = ("patient_id", "study_id", "series_id", "z", "instance_number", "pixel_spacing", "slice_thickness")
SEG_CACHE_CHOICES = ("all", "masked_and_test", "none")
CACHE_FORMAT = 1


class PrepareError(IchkitError):
    """A condition that stops `prepare` before it touches anything (wrong work folder, changed settings)."""


@dataclass(frozen=True)
class Settings:
    """What the cache is built with; persisted as cache.json."""

    windows: dict[str, tuple[float, float]]
    cls_size: int
    seg_size: int
    seg_cache: str

    @classmethod
    def from_config(cls, cfg: dict) -> Settings:
        section = cfg.get("prepare", {})
        windows = section.get("windows") or {}
        if not isinstance(windows, dict) or not windows:
            raise PrepareError("prepare.windows must map names to [center, width], e.g. brain: [40, 80]")
        parsed = {}
        for name, pair in windows.items():
            try:
                center, width = (float(v) for v in pair)
            except (TypeError, ValueError):
                center, width = math.nan, math.nan
            if not (math.isfinite(center) and width > 0):
                raise PrepareError(f"prepare.windows.{name} must be [center, width > 0] in HU, got {pair!r}")
            parsed[str(name)] = (center, width)
        seg_cache = str(section.get("seg_cache", "masked_and_test"))
        if seg_cache not in SEG_CACHE_CHOICES:
            raise PrepareError(f"prepare.seg_cache must be one of {', '.join(SEG_CACHE_CHOICES)}, got {seg_cache!r}")
        sizes = {k: int(section.get(k, d)) for k, d in (("cls_size", 256), ("seg_size", 512))}
        for key, value in sizes.items():
            if value < 8:
                raise PrepareError(f"prepare.{key} must be at least 8, got {value}")
        return cls(windows=parsed, seg_cache=seg_cache, **sizes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "windows": {k: list(v) for k, v in self.windows.items()},
            "cls_size": self.cls_size,
            "seg_size": self.seg_size,
            "seg_cache": self.seg_cache,
        }

    @property
    def window_list(self) -> tuple[tuple[float, float], ...]:
        return tuple(self.windows.values())

    @property
    def brain(self) -> tuple[tuple[float, float], int]:
        """(window, channel) the pseudo-HU map of rendered images is inverted through: `brain`, else the first."""
        names = list(self.windows)
        channel = names.index("brain") if "brain" in names else 0
        return self.windows[names[channel]], channel

    def wants_seg(self, row: Any) -> bool:
        if self.seg_cache == "all":
            return True
        if self.seg_cache == "masked_and_test":
            return bool(row["has_mask"]) or row["split"] == "test"
        return False


# ----------------------------------------------------------------------------------------------- workers
# Set once per worker process by `_init_worker` so that chunks carry only their rows.
_WORKER: dict[str, Any] = {}


def _init_worker(root: str, work: str, settings: Settings) -> None:
    _WORKER.update(root=Path(root), cache=ImageCache(work), settings=settings)


def _prepare_chunk(rows: pd.DataFrame, polygons: dict[str, list[np.ndarray]]) -> list[dict[str, Any]]:
    """Prepare each row; returns one manifest record ({'ok': ...}) or quarantine record per row."""
    # plain dicts, not iterrows() Series: building a Series per row costs more than windowing a slice
    return [_prepare_one(row, polygons.get(row["image_id"], [])) for row in rows.to_dict("records")]


def _prepare_one(row: dict[str, Any], polygons: list[np.ndarray]) -> dict[str, Any]:
    from ichkit import readers
    from ichkit.windows import apply_windows, hu_map, resize

    root: Path = _WORKER["root"]
    cache: ImageCache = _WORKER["cache"]
    settings: Settings = _WORKER["settings"]
    image_id = str(row["image_id"])
    path = root / str(row["path"])
    try:
        if not path.exists():
            raise BadInput(path, "file_not_found", "no such file")
        sl = readers.load_slice(row, root, channels=list(settings.windows))
        img = apply_windows(sl, settings.window_list)
        brain_window, brain_channel = settings.brain
        arrays = {
            "cls": resize(img, settings.cls_size),
            "hu": hu_map(sl, settings.cls_size, brain_window, brain_channel),
        }
        if settings.wants_seg(row):
            arrays["seg"] = resize(img, settings.seg_size)
        if bool(row["has_mask"]):
            mask = readers.load_mask(row, root, polygons, settings.seg_size, settings.seg_size)
            if mask is not None:
                arrays["mask"] = mask
    except BadInput as exc:
        return {"quarantine": {"image_id": image_id, "path": exc.path, "reason": exc.reason,
                               "detail": _one_line(exc.detail)}}
    except Exception as exc:  # one bad file must never stop the run; it is recorded instead
        detail = _one_line(f"{type(exc).__name__}: {exc}")
        return {"quarantine": {"image_id": image_id, "path": str(path), "reason": "unexpected", "detail": detail}}
    # saved only once everything decoded (a failing mask leaves no half-prepared image behind), and outside
    # the guard: a cache that cannot be written (disk full) must stop the run, not quarantine every input
    for kind, array in arrays.items():
        cache.save(kind, image_id, array)
    meta = sl.meta
    return {"ok": {
        "image_id": image_id,
        "source": str(row["source"]),
        "height": int(img.shape[0]),
        "width": int(img.shape[1]),
        "dtype": str(sl.pixels.dtype) if sl.pixels is not None else "uint8 render",
        "slope": float(sl.slope),
        "intercept": float(sl.intercept),
        "notes": "; ".join(sl.notes),
        **{k: _jsonable(meta.get(k)) for k in META_COLUMNS},
        "seg": "seg" in arrays,
        "mask": "mask" in arrays,
    }}


def _one_line(text: str, limit: int = 300) -> str:
    """Details stay on one line (greppable quarantine.csv) and short (a traceback-sized message is cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


# ------------------------------------------------------------------------------------- manifest, quarantine
class _Records:
    """The manifest and quarantine, appended per chunk so an interrupted run loses at most one chunk."""

    def __init__(self, cache: ImageCache):
        self.cache = cache
        self.jsonl = cache.manifest_log_path

    def load_manifest(self) -> pd.DataFrame:
        import pandas as pd

        frames = []
        if self.cache.manifest_path.is_file():
            frames.append(pd.read_parquet(self.cache.manifest_path))
        if self.jsonl.is_file():
            lines = []
            for text in self.jsonl.read_text().splitlines():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:
                    continue  # the last line of a run killed mid-write; that image is simply prepared again
            if lines:
                frames.append(pd.DataFrame(lines))
        if not frames:
            return _conform_manifest(pd.DataFrame(columns=list(MANIFEST_COLUMNS)))
        df = pd.concat([_conform_manifest(f) for f in frames], ignore_index=True)
        return df.drop_duplicates("image_id", keep="last").reset_index(drop=True)

    def load_quarantine(self) -> pd.DataFrame:
        import pandas as pd

        if not self.cache.quarantine_path.is_file():
            return pd.DataFrame({c: pd.Series(dtype="string") for c in QUARANTINE_COLUMNS})
        df = pd.read_csv(self.cache.quarantine_path, dtype="string", keep_default_na=False, on_bad_lines="skip")
        return df.drop_duplicates("image_id", keep="last").reset_index(drop=True)

    def append(self, ok: list[dict], quarantined: list[dict]) -> None:
        if ok:
            with open(self.jsonl, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in ok)
        if quarantined:
            new = not self.cache.quarantine_path.is_file()
            with open(self.cache.quarantine_path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, QUARANTINE_COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerows(quarantined)

    def consolidate(self, manifest: pd.DataFrame, quarantine: pd.DataFrame) -> None:
        """Write the final parquet + csv (atomically) and drop the append log."""
        with atomic_path(self.cache.manifest_path) as tmp:
            _conform_manifest(manifest).to_parquet(tmp, index=False)
        with atomic_path(self.cache.quarantine_path) as tmp:
            quarantine[QUARANTINE_COLUMNS].to_csv(tmp, index=False)
        self.jsonl.unlink(missing_ok=True)


def _conform_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """`table.conform` to MANIFEST_COLUMNS, with "" (not <NA>) where a file says nothing in a text column."""
    from ichkit.table import conform

    out = conform(df, MANIFEST_COLUMNS)
    text = [col for col, dtype in MANIFEST_COLUMNS.items() if dtype == "string"]
    out[text] = out[text].fillna("")
    return out


# -------------------------------------------------------------------------------------------------- stage
def prepare_dataset(
    ds: Dataset,
    work: Path | str,
    cfg: dict,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare every image of `ds` into `<work>/cache`, write `<work>/table.parquet`; return the summary.

    Raises PrepareError (before touching anything) if `<work>` holds another dataset's table or the
    cache was built with other settings and `force` is not set. `force` rebuilds the cache from scratch
    and retries quarantined inputs.
    """
    import pandas as pd
    from tqdm import tqdm

    from ichkit.readers.polygons import polygons_by_image
    from ichkit.table import Dataset, conform, write_table

    work = Path(work)
    root = Path(ds.root).resolve()
    settings = Settings.from_config(cfg)
    _check_work_folder(work, root)
    cache = ImageCache(work)
    _check_or_reset_cache(cache, settings, force)
    records = _Records(cache)

    slices = conform(ds.slices)
    ids = slices["image_id"].astype(str)
    manifest = records.load_manifest()
    quarantine = records.load_quarantine()
    done = _complete_ids(manifest, cache)
    # an id can be in both (a run stopped after quarantining an id the manifest still listed): complete
    # cached files win, else the quarantine, so that every id is counted in exactly one of them
    quarantine = quarantine[~quarantine["image_id"].isin(done)]
    already_quarantined = set(quarantine["image_id"])
    manifest = manifest[~manifest["image_id"].isin(already_quarantined)]
    todo = slices[~ids.isin(done | already_quarantined)]
    masked = ds.polygons["image_id"].isin(set(todo.loc[todo["has_mask"], "image_id"]))
    polygons = polygons_by_image(ds.polygons[masked])

    chunksize = max(1, int(cfg.get("prepare", {}).get("chunksize", 16)))
    chunks = [todo.iloc[i : i + chunksize] for i in range(0, len(todo), chunksize)]
    n_workers = _worker_count(workers, cfg, len(chunks))
    ok_now: list[dict] = []
    quarantined_now: list[dict] = []
    started = time.perf_counter()
    with tqdm(total=len(todo), unit="img", desc="prepare", disable=not progress or not len(todo)) as bar:
        for results in _run_chunks(chunks, polygons, root, work, settings, n_workers):
            ok = [r["ok"] for r in results if "ok" in r]
            bad = [r["quarantine"] for r in results if "quarantine" in r]
            records.append(ok, bad)
            ok_now += ok
            quarantined_now += bad
            bar.update(len(results))
    seconds = time.perf_counter() - started

    # an id prepared now leaves the quarantine and vice versa (a cached image whose file broke since)
    ok_ids = {r["image_id"] for r in ok_now}
    bad_ids = {r["image_id"] for r in quarantined_now}
    if ok_now:
        manifest = pd.concat([manifest, _conform_manifest(pd.DataFrame(ok_now))], ignore_index=True)
    manifest = manifest[~manifest["image_id"].isin(bad_ids)].drop_duplicates("image_id", keep="last")
    if quarantined_now:
        quarantine = pd.concat([quarantine, pd.DataFrame(quarantined_now, dtype="string")], ignore_index=True)
    quarantine = quarantine[~quarantine["image_id"].isin(ok_ids)].drop_duplicates("image_id", keep="last")
    records.consolidate(manifest, quarantine)

    slices = _fill_from_manifest(slices, manifest, quarantine)
    unaccounted = slices.loc[slices["status"] == "pending", "image_id"]
    if len(unaccounted):
        raise AssertionError(f"{len(unaccounted)} input ids are neither cached nor quarantined, e.g. {unaccounted.iloc[0]}")
    table = write_table(Dataset(root=root, layout=ds.layout, slices=slices, polygons=ds.polygons), work)

    in_ds = manifest[manifest["image_id"].isin(set(ids))]
    q_in_ds = quarantine[quarantine["image_id"].isin(set(ids))]
    notes = Counter(note.split(":", 1)[0].strip() for text in in_ds["notes"] for note in str(text).split("; ") if note)
    summary = {
        "images_in": len(slices),
        "prepared_now": len(ok_now),
        "quarantined_now": len(quarantined_now),
        "skipped_done": int(ids.isin(done).sum()),
        "skipped_quarantined": int(ids.isin(already_quarantined).sum()),
        "in_cache": len(in_ds),
        "quarantined": len(q_in_ds),
        "quarantined_by_reason": dict(Counter(q_in_ds["reason"]).most_common()),
        "workers": n_workers,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(todo) / seconds, 1) if len(todo) and seconds > 0 else None,
        "notes": dict(notes.most_common()),
        "paths": {
            "table": str(table),
            "cache": str(cache.root),
            "manifest": str(cache.manifest_path),
            "quarantine": str(cache.quarantine_path),
        },
    }
    if progress:
        print(format_summary(summary))
    return summary


def _check_work_folder(work: Path, root: Path) -> None:
    from ichkit.table import table_meta

    recorded = (table_meta(work) or {}).get("root")
    if recorded and Path(recorded).resolve() != root:
        raise PrepareError(
            f"{work} holds the table and cache of another dataset ({recorded}), not {root}. "
            f"Pass --work with a different folder for this dataset (or delete {work})."
        )


def _check_or_reset_cache(cache: ImageCache, settings: Settings, force: bool) -> None:
    wanted = settings.to_json()
    if cache.settings_path.is_file() and not force:
        recorded = json.loads(cache.settings_path.read_text())
        if recorded != wanted:
            changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
            details = "; ".join(f"{k}: {recorded.get(k)!r} -> {wanted.get(k)!r}" for k in changed)
            raise PrepareError(
                f"{cache.root} was built with other settings ({details}); pass --force to rebuild it"
            )
    if force and cache.root.exists():
        for kind in KINDS:
            shutil.rmtree(cache.root / kind, ignore_errors=True)
        for path in (cache.manifest_path, cache.manifest_log_path, cache.quarantine_path, cache.settings_path):
            path.unlink(missing_ok=True)
    cache.root.mkdir(parents=True, exist_ok=True)
    cache.settings_path.write_text(json.dumps(wanted, indent=2))


def _complete_ids(manifest: pd.DataFrame, cache: ImageCache) -> set[str]:
    """Ids in the manifest whose every cached file still exists (a deleted file re-prepares that id)."""
    done = set()
    for image_id, seg, mask in zip(manifest["image_id"], manifest["seg"], manifest["mask"]):
        kinds = ["cls", "hu"] + (["seg"] if seg else []) + (["mask"] if mask else [])
        if all(cache.has(kind, image_id) for kind in kinds):
            done.add(image_id)
    return done


def _worker_count(workers: int | None, cfg: dict, n_chunks: int) -> int:
    """`workers` (else prepare.workers; 0 = all cores), never more than there are chunks to share."""
    n = int(cfg.get("prepare", {}).get("workers", 0) if workers is None else workers)
    if n < 0:
        raise PrepareError(f"workers must be >= 0 (0 = all cores), got {n}")
    return max(1, min(n or os.cpu_count() or 1, n_chunks))


def _run_chunks(
    chunks: list[pd.DataFrame],
    polygons: dict[str, list[np.ndarray]],
    root: Path,
    work: Path,
    settings: Settings,
    workers: int,
) -> Iterator[list[dict]]:
    """Yield each chunk's results as it completes; in-process for one worker, else a process pool."""
    def polys(chunk: pd.DataFrame) -> dict[str, list[np.ndarray]]:
        return {i: polygons[i] for i in chunk["image_id"] if i in polygons}

    if workers == 1:
        _init_worker(str(root), str(work), settings)
        for chunk in chunks:
            yield _prepare_chunk(chunk, polys(chunk))
        return
    _preload()
    pending = iter(chunks)
    in_flight: set[Future] = set()
    # keep a few chunks queued per worker: enough to stay busy, without pickling the whole table up front
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(root), str(work), settings)) as pool:
        try:
            while True:
                while len(in_flight) < 4 * workers:
                    chunk = next(pending, None)
                    if chunk is None:
                        break
                    in_flight.add(pool.submit(_prepare_chunk, chunk, polys(chunk)))
                if not in_flight:
                    return
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        except BaseException:
            # interrupted (Ctrl-C, or the caller stopped): drop queued chunks instead of finishing them
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _preload() -> None:
    """Import what the workers run before forking them, so that each does not import it again."""
    import cv2  # noqa: F401
    import pydicom.pixels  # noqa: F401

    from ichkit import dicom, readers, windows  # noqa: F401


def _fill_from_manifest(slices: pd.DataFrame, manifest: pd.DataFrame, quarantine: pd.DataFrame) -> pd.DataFrame:
    """Meta columns from what each file says (keeping the reader's value where the file says nothing), status."""
    out = slices.copy()
    by_id = manifest.set_index("image_id")
    for col in META_COLUMNS:
        from_file = out["image_id"].map(by_id[col])
        has_value = from_file.notna() & (from_file != "") if out[col].dtype == "string" else from_file.notna()
        out[col] = out[col].mask(has_value.fillna(False).astype(bool), from_file).astype(out[col].dtype)
    out["status"] = "pending"
    out.loc[out["image_id"].isin(set(quarantine["image_id"])), "status"] = "quarantined"
    out.loc[out["image_id"].isin(set(manifest["image_id"])), "status"] = "ok"
    out["status"] = out["status"].astype("string")
    return out


def format_summary(summary: dict[str, Any]) -> str:
    s = summary
    rate = f"{s['images_per_s']} img/s on {s['workers']} worker(s)" if s["images_per_s"] else "nothing to do"
    lines = [
        f"prepare: {s['images_in']} images in: {s['prepared_now']} prepared now, "
        f"{s['skipped_done']} skipped (already cached), {s['skipped_quarantined']} skipped (quarantined before), "
        f"{s['quarantined_now']} quarantined now; {rate} ({s['seconds']:.1f} s)",
        f"  every input id accounted for: {s['in_cache']} in the cache + {s['quarantined']} quarantined "
        f"= {s['in_cache'] + s['quarantined']}",
    ]
    if s["quarantined_by_reason"]:
        lines.append("  quarantined by reason: " + ", ".join(f"{k}: {v}" for k, v in s["quarantined_by_reason"].items()))
    if s["notes"]:
        lines.append("  notes (fixes applied while loading): " + ", ".join(f"{k}: {v}" for k, v in s["notes"].items()))
    lines += [f"  wrote {name}: {path}" for name, path in s["paths"].items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset root, or a folder holding one (default: paths.input)")
    parser.add_argument("--layout", default=None,
                        help="dataset layout (rsna, renders, nifti or images; see ichkit.readers) instead of detecting it")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: prepare.workers; 0 = all cores)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild the cache from scratch (after changing prepare settings), retrying quarantined inputs")


def run(args: argparse.Namespace, cfg: dict) -> int:
    import sys

    from ichkit import readers

    data = Path(args.data if args.data is not None else cfg["paths"]["input"])
    try:
        root = readers.find_dataset(data)
        if root is None:
            print(f"error: no dataset found under {data}: run `ichkit demo-data` to write the synthetic one, "
                  f"or pass --data PATH", file=sys.stderr)
            return 2
        ds = readers.read_dataset(root, layout=args.layout)
    except ValueError as exc:  # LabelFileError, several datasets, unknown layout: each names file and problem
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = prepare_dataset(ds, Path(cfg["paths"]["work"]), cfg, workers=args.workers, force=args.force)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # a run where nothing could be prepared (every input quarantined) is a failure for the stages after it
    return 0 if summary["in_cache"] else 1
