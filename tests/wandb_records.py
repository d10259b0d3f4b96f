"""Read an offline W&B run the way ``wandb sync`` would: the records of its ``run-<id>.wandb`` transaction log.

The log is W&B's 7-byte header (``:W&B``, magic, version) followed by LevelDB-log framing (32 KiB blocks; each
chunk: CRC32, length, type FULL/FIRST/MIDDLE/LAST) around protobuf ``Record`` messages (wandb.proto). wandb 0.31
has no Python reader of its own (its core is a Go binary), so the tests use this one.
"""

from __future__ import annotations

import glob
import os
import struct
from collections import defaultdict

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes):
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


def run_records(run_dir: str) -> dict[str, list]:
    """{record type ("run", "config", "history", "stats", ...): [Record, ...]} of an ``offline-run-*`` directory."""
    from wandb.proto import wandb_internal_pb2 as pb

    paths = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    assert len(paths) == 1, f"expected one run-*.wandb in {run_dir}, found {paths}"
    with open(paths[0], "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{paths[0]} is not a W&B transaction log"
    records: dict[str, list] = defaultdict(list)
    for chunk in _chunks(data):
        rec = pb.Record()  # type: ignore[attr-defined]  # protobuf-generated class: no stubs
        rec.ParseFromString(chunk)
        records[rec.WhichOneof("record_type")].append(rec)
    return dict(records)


def config_keys(records: dict[str, list]) -> set[str]:
    return {item.key for rec in records.get("config", []) for item in rec.config.update}
