"""Finding shards, and seek-based reading of local tar shards: headers are scanned, member bytes are read only
when asked for.

:func:`resolve_shards` turns what a user passes (files, globs, brace patterns, a shard directory or its
``index.json``, or a list of these) into shard URLs plus the sample counts ``index.json`` records.

A format-v1 sample holds 2–3 PNGs per view (32–40 views) but a training step uses a handful of views. Python's
streaming ``tarfile`` (what ``webdataset.tarfile_to_samples`` uses) parses and reads every member; here each
sample is a :class:`LazySample` — a read-only mapping ``member suffix → bytes`` that reads with ``os.pread`` on
access, so the decoder touches only the bytes of the views it picked. Grouping follows webdataset exactly: the key
is the member name up to the first dot of its basename, and consecutive members with the same key form a sample.

Damage is reported, never fatal: a bad header raises :class:`TarScanError` (kind ``shard_read``) after the intact
samples before it; a file cut inside a member (``truncated_shard``, naming the ``dropped`` sample) or before the
end-of-archive marker (``truncated_shard``) ends the shard after its intact samples — see :func:`scan_samples`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Union

import braceexpand

BLOCK = 512
_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_FDS: "OrderedDict[str, int]" = OrderedDict()
_MAX_FDS = 32


class TarScanError(Exception):
    """A problem in a shard: ``kind`` is ``shard_read`` (bad data) or ``truncated_shard`` (cut short)."""

    def __init__(self, url: str, key: str, member: str, reason: str, kind: str, dropped: str | None = None):
        self.url, self.key, self.member, self.reason, self.kind = url, key, member, reason, kind
        self.dropped = dropped  # the key of a sample lost with the damage, if any
        super().__init__(f"{url}: {reason}")


class ShardIndexError(ValueError):
    """A shard directory's ``index.json`` is unreadable or disagrees with the shards on disk."""


def rebuild_hint(directory: str) -> str:
    return f"rebuild it from the shards with `lift3d-render index --out {directory}`"


def read_index(directory: str) -> dict[str, int] | None:
    """{shard file name: sample count} of ``directory``'s ``index.json``, None without one. Raises
    :class:`ShardIndexError` naming the file and the rebuild command when it is not a valid index."""
    path = os.path.join(directory, "index.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return {str(s["url"]): int(s["nsamples"]) for s in doc["shardlist"]}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"is not valid JSON ({exc})"
    except (KeyError, TypeError, ValueError) as exc:
        problem = f"is not a shard index (expected {{'shardlist': [{{'url', 'nsamples'}}, ...]}}; {exc!r})"
    raise ShardIndexError(f"{path} {problem}: {rebuild_hint(directory)}")


def index_counts(directory: str) -> dict[str, int]:
    """{shard path: sample count} from ``directory``'s ``index.json`` ({} without one)."""
    return {os.path.join(directory, url): n for url, n in (read_index(directory) or {}).items()}


def _check_index_matches_disk(directory: str, counts: dict[str, int]) -> None:
    """A directory's index must list exactly its ``*.tar`` files: a shard left out would be skipped without a word,
    a listed shard that is gone would fail mid-epoch."""
    on_disk = set(glob.glob(os.path.join(directory, "*.tar")))
    unindexed, gone = sorted(on_disk - set(counts)), sorted(set(counts) - on_disk)
    if not unindexed and not gone:
        return
    problems = []
    for what, names in (("are not in it", unindexed), ("are listed but missing", gone)):
        if names:
            shown = ", ".join(os.path.basename(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")
            problems.append(f"{len(names)} shard(s) {what} ({shown})")
    raise ShardIndexError(f"{os.path.join(directory, 'index.json')} does not match the shards on disk: "
                          f"{'; '.join(problems)}; {rebuild_hint(directory)}")


def resolve_shards(spec: Union[str, list[str]]) -> tuple[list[str], dict[str, int]]:
    """Shard URLs and known sample counts from brace patterns, globs, a directory / index.json, or a list."""
    if isinstance(spec, (list, tuple)):
        urls, counts = [], {}
        for s in spec:
            u, c = resolve_shards(s)
            urls += u
            counts.update(c)
        return urls, counts
    spec = os.path.expanduser(str(spec))
    if os.path.isdir(spec) or os.path.basename(spec) == "index.json":
        directory = spec if os.path.isdir(spec) else os.path.dirname(spec)
        counts = index_counts(directory)
        if os.path.exists(os.path.join(directory, "index.json")):
            _check_index_matches_disk(directory, counts)
        urls = sorted(counts) or sorted(glob.glob(os.path.join(directory, "*.tar")))
        if not urls:
            raise FileNotFoundError(f"no shards in {directory!r} (no index.json and no *.tar): render some with "
                                    f"`lift3d-render ... --out {spec}` or point the shards option elsewhere")
        return urls, counts
    urls = list(braceexpand.braceexpand(spec))
    if "://" in spec or spec.startswith("pipe:"):
        return urls, {}  # remote: no globbing, no index
    expanded = []
    for u in urls:
        matches = sorted(glob.glob(u)) if glob.has_magic(u) else [u]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise FileNotFoundError(f"no shard matches {u!r} (from {spec!r}, cwd {os.getcwd()}); "
                                    "expected a .tar path, glob, brace pattern or a shard directory")
        expanded += matches
    counts = {}
    for d in sorted({os.path.dirname(u) for u in expanded}):
        counts.update({u: n for u, n in index_counts(d).items() if u in set(expanded)})
    return expanded, counts


def _fd(path: str) -> int:
    """A cached read-only descriptor (pread needs no shared position, so forked workers may share it)."""
    fd = _FDS.pop(path, None)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        while len(_FDS) >= _MAX_FDS:
            os.close(_FDS.popitem(last=False)[1])
    _FDS[path] = fd
    return fd


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


class LazySample(Mapping):
    """One sample: ``__key__``, ``__url__`` and member suffixes (``000.rgba.png``…) whose bytes load on access."""

    def __init__(self, url: str, key: str, members: dict[str, tuple[int, int]]):
        self.url, self.key, self.members = url, key, members

    def __getitem__(self, name: str):
        if name == "__key__":
            return self.key
        if name == "__url__":
            return self.url
        offset, size = self.members[name]
        data = os.pread(_fd(self.url), size, offset)
        if len(data) != size:
            raise OSError(f"{self.url}: member {self.key}.{name} has {len(data)} of {size} bytes (file changed?)")
        return data

    def __iter__(self) -> Iterator[str]:
        yield "__key__"
        yield "__url__"
        yield from self.members

    def __len__(self) -> int:
        return 2 + len(self.members)


def scan_samples(url: str) -> Iterator[LazySample]:
    """The samples of a local tar file, in order. Raises :class:`TarScanError` at the first damage (after yielding
    every intact sample before it); a shard missing only its end-of-archive marker yields all its samples first."""
    total = os.path.getsize(url)
    fd = _fd(url)
    key: str | None = None  # the sample being collected, and its members' (data offset, size) by suffix
    members: dict[str, tuple[int, int]] = {}
    offset, long_name = 0, None
    while True:
        header = os.pread(fd, BLOCK, offset) if offset + BLOCK <= total else b""
        if len(header) < BLOCK:
            if key is not None:
                yield LazySample(url, key, members)
            raise TarScanError(url, key or "-", "-", f"no end-of-archive marker after {offset} of {total} bytes: the "
                               "shard was cut short (re-copy it, or let lift3d-render recover its .tar.tmp)",
                               "truncated_shard")
        if header.count(0) == BLOCK:  # end of archive
            if key is not None:
                yield LazySample(url, key, members)
            return
        try:
            stored, size = _octal(header[148:156]), _octal(header[124:136])
        except ValueError:
            stored = size = -1
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarScanError(url, key or "-", "-", f"bad tar header checksum at byte {offset} (not a tar file, or "
                               "corrupt)", "shard_read")
        kind = header[156:157]
        data = offset + BLOCK
        offset = data + (size + BLOCK - 1) // BLOCK * BLOCK
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        if kind in (b"L", b"x"):  # GNU long name / pax header for the next member
            body = os.pread(fd, size, data)
            if kind == b"L":
                long_name = body.split(b"\0", 1)[0]
            else:
                found = re.search(rb"\d+ path=([^\n]*)\n", body)
                long_name = found.group(1) if found else long_name
            continue
        if kind not in (b"0", b"\0", b"7"):  # directories, links, global headers: not sample members
            long_name = None
            continue
        name, long_name = (long_name or name).decode("utf-8", "replace"), None
        match = _NAME.match(name)
        if match is None:
            continue  # webdataset ignores names without an extension too
        prefix, suffix = match.groups()
        if prefix != key:
            if key is not None:
                yield LazySample(url, key, members)
            key, members = prefix, {}
        if data + size > total:
            raise TarScanError(url, prefix, name, f"member {name} is cut off at byte {total} ({total - data} of "
                               f"{size} bytes): the shard was truncated (re-copy it, or let lift3d-render recover its "
                               ".tar.tmp)", "truncated_shard", dropped=prefix)  # prefix == key here
        members[suffix] = (data, size)
