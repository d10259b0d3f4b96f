"""Shard format v1 writing: samples encoded as the format's members, and a crash-safe, resumable shard writer.

Layout of an output directory::

    00000-000000.tar …          committed shards ``{task:05d}-{n:06d}.tar`` (renamed from ``.tar.tmp`` when complete)
    index.json                  every committed shard's sample count (wids shard-index format + ``format``)
    _state/task-00000.done.jsonl   one line per flushed sample: key, shard, byte offset where the sample ends
    _state/task-00000.failures.jsonl  the failure manifest: key, reason, log excerpt
    _state/settings.json        the settings every sample of the directory was made with (check_settings)
    _logs/task-00000.log        the task's Blender stdout/stderr

Exactly-once: a sample is written to the open ``.tar.tmp`` and fsynced *before* its line goes to the done-list.
After a SIGKILL, :meth:`ShardWriter.open` cuts each leftover ``.tar.tmp`` back to the end of its last done
sample, closes the archive and commits it; everything after that point was never marked done and is rendered
again. No partial shard is ever visible under a ``.tar`` name.
"""

from __future__ import annotations

import fcntl
import glob
import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass
from typing import BinaryIO

import cv2
import numpy as np

from render_farm.shards.spec import CAMERAS, FORMAT, GT_MESH, MAX_VIEWS, META, check_key, view_member
from render_farm.shards.tar_index import read_index

SHARD_RE = re.compile(r"^(\d{5})-(\d{6})\.tar$")


def encode_png(image: np.ndarray, compression: int = 3) -> bytes:
    """PNG bytes of an 8-bit RGB/RGBA or a 16-bit single-channel image (channels in RGB(A) order)."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape} and dtype {image.dtype}")
    return buf.tobytes()


def encode_cameras(c2w: np.ndarray, K: np.ndarray, hw: np.ndarray) -> bytes:
    """``cameras.npz`` bytes: ``c2w`` float32 (V,4,4), ``K`` float32 (V,3,3), ``hw`` int32 (V,2)."""
    buf = io.BytesIO()
    np.savez(buf, c2w=np.asarray(c2w, np.float32), K=np.asarray(K, np.float32), hw=np.asarray(hw, np.int32))
    return buf.getvalue()


def encode_mesh(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """``mesh.npz`` bytes (compressed): ``vertices`` float32 (V, 3), ``faces`` int32 (F, 3) indices into them."""
    v, f = np.asarray(vertices), np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise ValueError(f"mesh vertices must be a finite (V, 3) array, got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"mesh faces must be a non-empty (F, 3) array of indices below {len(v)}, got shape {f.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, vertices=v.astype(np.float32), faces=f.astype(np.int32))
    return buf.getvalue()


def encode_sample(key: str, views: list[dict], c2w: np.ndarray, K: np.ndarray, hw: np.ndarray, meta: dict,
                  mesh: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """A format-v1 sample: ``NNN.rgba.png``, ``NNN.depth.png``, optional ``NNN.normal.png``, cameras, meta, and
    the optional ``mesh.npz`` when ``mesh`` (vertices, faces) is given (the rendered geometry)."""
    check_key(key)
    n = len(views)
    if not (len(c2w) == len(K) == len(hw) == n):
        raise ValueError(f"{key}: {n} views but {len(c2w)} c2w, {len(K)} K, {len(hw)} hw")
    if n > MAX_VIEWS:
        raise ValueError(f"{key}: {n} views; format v1 numbers views with 3 digits (at most {MAX_VIEWS})")
    sample: dict[str, str | bytes] = {"__key__": key}
    for i, v in enumerate(views):
        if v["rgba"].dtype != np.uint8 or v["rgba"].shape[-1] != 4:
            raise ValueError(f"{key} view {i}: rgba must be uint8 (H, W, 4), got {v['rgba'].dtype} {v['rgba'].shape}")
        if v["depth"].dtype != np.uint16:
            raise ValueError(f"{key} view {i}: depth must be uint16, got {v['depth'].dtype}")
        sample[view_member(i, "rgba")] = encode_png(v["rgba"])
        sample[view_member(i, "depth")] = encode_png(v["depth"])
        if v.get("normal") is not None:
            sample[view_member(i, "normal")] = encode_png(v["normal"])
    sample[CAMERAS] = encode_cameras(c2w, K, hw)
    if mesh is not None:
        sample[GT_MESH] = encode_mesh(*mesh)
    sample[META] = json.dumps({"format": FORMAT, "num_views": n, **meta}, sort_keys=True).encode()
    return sample


def _write_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o444
    info.uname = info.gname = "lift3d"
    tar.addfile(info, io.BytesIO(data))


def _parse_jsonl_line(line: str) -> dict | None:
    """One record of a JSON-lines file, or None for a torn line. A line that an older writer glued onto a torn one
    (``{"key": "a", "sh{"key": "b", ...}``) still yields its complete last record."""
    try:
        row = json.loads(line)
        return row if isinstance(row, dict) else None
    except json.JSONDecodeError:
        pass
    start = line.find('{"', 1)
    while start != -1:
        try:
            row = json.loads(line[start:])
            return row if isinstance(row, dict) and "key" in row else None
        except json.JSONDecodeError:
            start = line.find('{"', start + 1)
    return None


def _read_jsonl(path: str) -> list[dict]:
    """Records of a JSON-lines file; a torn line (a kill or a full disk mid-write) is ignored."""
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                row = _parse_jsonl_line(line)
                if row is not None:
                    rows.append(row)
    return rows


def _append_jsonl(path: str, row: dict) -> None:
    """Append one record durably. It starts on a fresh line even after a torn one, and a failed append (disk full)
    is cut off again, so a half-written record never merges with the next one nor claims work that was not done."""
    data = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # the torn tail is skipped by readers and followed by a fresh line
            raise
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def count_samples(tar_path: str) -> int:
    keys = set()
    with tarfile.open(tar_path) as tar:
        for m in tar:
            keys.add(m.name.split(".", 1)[0])
    return len(keys)


def update_index(out_dir: str, entries: dict[str, int] | None = None, rebuild: bool = False) -> dict:
    """Record shard sample counts in ``index.json`` (file-locked: SLURM array tasks share a directory).

    ``rebuild`` rescans every committed shard instead (``lift3d-render index``).
    """
    path = os.path.join(out_dir, "index.json")
    with open(os.path.join(out_dir, ".index.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = {} if rebuild else (read_index(out_dir) or {})
        if rebuild:
            for tar in sorted(glob.glob(os.path.join(out_dir, "*.tar"))):
                index[os.path.basename(tar)] = count_samples(tar)
        index.update(entries or {})
        doc = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "format": FORMAT,
               "name": os.path.basename(os.path.abspath(out_dir)),
               "shardlist": [{"url": k, "nsamples": v} for k, v in sorted(index.items())],
               "total_samples": int(sum(index.values()))}
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return doc


class SettingsMismatchError(ValueError):
    """An output directory holds samples made with other settings than this run's."""


def check_settings(out_dir: str, settings: dict, allow_change: bool = False, flag: str = "--allow-settings-change"
                   ) -> dict | None:
    """Record ``settings`` (JSON-able) in ``_state/settings.json`` on the first run into ``out_dir``; on later runs
    (resumes, other array tasks) compare them. Different settings raise :class:`SettingsMismatchError` listing each
    difference, unless ``allow_change`` (then the file records the new settings; returns the old ones)."""
    state = os.path.join(out_dir, "_state")
    os.makedirs(state, exist_ok=True)
    path = os.path.join(state, "settings.json")
    settings = json.loads(json.dumps(settings, sort_keys=True))  # as it reads back (tuples -> lists)
    with open(os.path.join(state, ".settings.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = None
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)["settings"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SettingsMismatchError(f"{path} is unreadable ({exc!r}); delete it to record this run's "
                                            f"settings") from None
            if old == settings:
                return None
            diff = [f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in sorted(set(old) | set(settings))
                    if old.get(k) != settings.get(k)]
            if not allow_change:
                raise SettingsMismatchError(
                    f"{out_dir} was rendered with other settings ({'; '.join(diff)}; recorded in {path}): use a new "
                    f"--out for these settings, or pass {flag} to add samples made with them to this directory")
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"settings": settings, "previous": old}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return old


@dataclass
class TaskPaths:
    out_dir: str
    task: int

    @property
    def state_dir(self) -> str:
        return os.path.join(self.out_dir, "_state")

    @property
    def done(self) -> str:
        return os.path.join(self.state_dir, f"task-{self.task:05d}.done.jsonl")

    @property
    def failures(self) -> str:
        return os.path.join(self.state_dir, f"task-{self.task:05d}.failures.jsonl")

    @property
    def log(self) -> str:
        return os.path.join(self.out_dir, "_logs", f"task-{self.task:05d}.log")


class ShardWriter:
    """Writes one task's shards; resumes after any kill. Use :meth:`open`, then :meth:`write` per object."""

    def __init__(self, out_dir: str, task: int = 0, maxcount: int = 64, maxsize: float = 2e9):
        self.paths = TaskPaths(out_dir, task)
        self.out_dir, self.task, self.maxcount, self.maxsize = out_dir, task, maxcount, maxsize
        self._file: BinaryIO | None = None  # the open shard's .tar.tmp and the tar writing it, None between shards
        self._tar: tarfile.TarFile | None = None
        self._name = ""  # the open shard's file name, set by _start_shard
        self._count = 0
        self._next = 0
        self.done: dict[str, dict] = {}
        self.failed: dict[str, dict] = {}

    # --- resume ---------------------------------------------------------------------------------------------
    def open(self) -> "ShardWriter":
        os.makedirs(self.paths.state_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.paths.log), exist_ok=True)
        done_rows = _read_jsonl(self.paths.done)
        for tmp in sorted(glob.glob(os.path.join(self.out_dir, f"{self.task:05d}-*.tar.tmp"))):
            self._recover(tmp, done_rows)
        committed = {os.path.basename(p) for p in glob.glob(os.path.join(self.out_dir, f"{self.task:05d}-*.tar"))}
        self.done = {r["key"]: r for r in done_rows if r["shard"] in committed}
        self.failed = {r["key"]: r for r in _read_jsonl(self.paths.failures)}
        numbers = [int(m.group(2)) for m in map(SHARD_RE.match, committed) if m]
        self._next = max(numbers, default=-1) + 1
        self._index_missing(committed)
        return self

    def _index_missing(self, committed: set[str]) -> None:
        """A kill between a shard's rename and its index update leaves it unindexed: add it now."""
        indexed = set(read_index(self.out_dir) or {})
        missing = {n: count_samples(os.path.join(self.out_dir, n)) for n in committed - indexed}
        if missing:
            update_index(self.out_dir, missing)

    def _recover(self, tmp: str, done_rows: list[dict]) -> None:
        name = os.path.basename(tmp)[: -len(".tmp")]
        ends = [r["end"] for r in done_rows if r["shard"] == name]
        if not ends:
            os.remove(tmp)  # nothing in it was ever marked done
            return
        end = max(ends)
        with open(tmp, "r+b") as f:
            f.truncate(end)
            f.seek(end)
            f.write(b"\0" * 1024)  # end-of-archive marker: two zero blocks
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, tmp[: -len(".tmp")])
        _fsync_dir(self.out_dir)
        update_index(self.out_dir, {name: count_samples(tmp[: -len(".tmp")])})

    # --- writing --------------------------------------------------------------------------------------------
    def _start_shard(self) -> None:
        self._name = f"{self.task:05d}-{self._next:06d}.tar"
        self._next += 1
        self._file = open(os.path.join(self.out_dir, self._name + ".tmp"), "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def write(self, sample: dict, record: dict | None = None) -> None:
        """Append one object's sample, make it durable, then mark it done (with ``record`` in the done-list).

        If anything fails while the sample is written (a full disk, an interrupt), the open shard is cut back to
        its last complete sample and committed (:meth:`_abandon_shard`), and the error is raised: the object is not
        done and renders again on the next run; no half sample ever reaches a ``.tar``."""
        key = check_key(sample["__key__"])
        if key in self.done:
            raise ValueError(f"object {key} is already in a shard of {self.out_dir}; it would be duplicated")
        if self._tar is None:
            self._start_shard()
        tar, file = self._tar, self._file
        assert tar is not None and file is not None  # _start_shard opened both
        try:
            mtime = time.time()
            for name in sorted(k for k in sample if k != "__key__"):
                _write_member(tar, f"{key}.{name}", sample[name], mtime)
            file.flush()
            os.fsync(file.fileno())
            row = {"key": key, "shard": self._name, "end": file.tell(), **(record or {})}
            _append_jsonl(self.paths.done, row)
        except BaseException:
            self._abandon_shard()
            raise
        self.done[key] = row
        self._count += 1
        if self._count >= self.maxcount or file.tell() >= self.maxsize:
            self._commit()

    def _abandon_shard(self) -> None:
        """After a failed write: close the open ``.tar.tmp`` without finishing it and recover it as after a kill
        (cut to the end of its last done sample, then commit; removed if it holds none). If even that fails (the
        disk is still full), the ``.tar.tmp`` stays for the next :meth:`open` to recover."""
        tmp = os.path.join(self.out_dir, self._name + ".tmp")
        file, self._file, self._tar, self._count = self._file, None, None, 0
        try:
            if file is not None:
                file.close()
        except OSError:
            pass  # unflushed bytes of the torn sample: cut off below anyway
        try:
            self._recover(tmp, list(self.done.values()))
        except OSError:
            pass

    def record_failure(self, key: str, reason: str, log_excerpt: str = "", **extra) -> None:
        row = {"key": key, "reason": reason, "log_excerpt": log_excerpt[-4000:], "time": time.time(), **extra}
        _append_jsonl(self.paths.failures, row)
        self.failed[key] = row

    def _commit(self) -> None:
        tar, file = self._tar, self._file
        assert tar is not None and file is not None, "_commit without an open shard"
        tar.close()  # writes the end-of-archive blocks
        file.flush()
        os.fsync(file.fileno())
        file.close()
        path = os.path.join(self.out_dir, self._name)
        os.replace(path + ".tmp", path)
        _fsync_dir(self.out_dir)
        update_index(self.out_dir, {self._name: self._count})
        self._file = self._tar = None

    def close(self) -> None:
        if self._tar is not None:
            if self._count:
                self._commit()
            else:
                self._tar.close()
                if self._file is not None:
                    self._file.close()
                os.remove(os.path.join(self.out_dir, self._name + ".tmp"))
                self._file = self._tar = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
