"""Shard format v1, in one place: what a sample holds, how it is written, and how it is read back.

Every producer (render farm, MVImgNet conversion, the Zero123 pass) and every reader (the training loaders,
evaluation, the demo) imports the format from here; docs/DESIGN.md "Shard format v1" is its contract.

    spec.py       the constants: the format tag, the key rule ``[A-Za-z0-9_-]`` (check_key, sanitise_key), the
                  member names (``NNN.rgba.png``, ``NNN.depth.png``, ``NNN.normal.png``, cameras.npz, meta.json,
                  the optional mesh.npz),
                  and safe_output_path, the one way a command names a per-object file after a key
    write.py      encoding (encode_png, encode_cameras, encode_sample) and the crash-safe, resumable ShardWriter
                  with its done-lists, failure manifest and ``index.json``
    read.py       decoding a sample's members, only the views asked for (read_meta, read_cameras, view_roles,
                  read_header: key rule, usable cameras, roles; decode_rgba / decode_depth / decode_normal,
                  check_views); problems raise
                  CorruptSampleError naming the key, the member and the reason
    tar_index.py  finding shards (resolve_shards: files, globs, brace patterns, directories / index.json) and
                  iterating a local tar's samples with seeks, reading members only when asked (scan_samples)

Imports point one way: this package needs numpy and OpenCV, never torch, Lightning or ``datamodules``.
"""

from render_farm.shards.read import (
                                     KINDS,
                                     CorruptSampleError,
                                     check_views,
                                     decode_bgra,
                                     decode_depth,
                                     decode_depth_raw,
                                     decode_normal,
                                     decode_rgba,
                                     has_gt_mesh,
                                     read_cameras,
                                     read_gt_mesh,
                                     read_header,
                                     read_meta,
                                     sample_key,
                                     view_roles,
)
from render_farm.shards.spec import (
                                     CAMERAS,
                                     FORMAT,
                                     GT_MESH,
                                     KEY_RE,
                                     MAX_VIEWS,
                                     META,
                                     VIEW_KINDS,
                                     check_key,
                                     safe_output_path,
                                     sanitise_key,
                                     view_member,
)
from render_farm.shards.tar_index import (
                                     LazySample,
                                     ShardIndexError,
                                     TarScanError,
                                     index_counts,
                                     read_index,
                                     resolve_shards,
                                     scan_samples,
)
from render_farm.shards.write import (
                                     SettingsMismatchError,
                                     ShardWriter,
                                     TaskPaths,
                                     check_settings,
                                     count_samples,
                                     encode_cameras,
                                     encode_mesh,
                                     encode_png,
                                     encode_sample,
                                     update_index,
)

__all__ = [
    "CAMERAS", "FORMAT", "GT_MESH", "KEY_RE", "KINDS", "MAX_VIEWS", "META", "VIEW_KINDS", "CorruptSampleError",
    "LazySample",
    "SettingsMismatchError", "ShardIndexError", "ShardWriter", "TarScanError", "TaskPaths", "check_key",
    "check_settings", "check_views", "count_samples",
    "decode_bgra", "decode_depth", "decode_depth_raw", "decode_normal", "decode_rgba", "encode_cameras", "encode_mesh",
    "encode_png", "encode_sample", "has_gt_mesh", "index_counts", "read_cameras", "read_gt_mesh", "read_index",
    "read_header", "read_meta", "resolve_shards",
    "safe_output_path", "sample_key", "sanitise_key", "scan_samples", "update_index", "view_member", "view_roles",
]
