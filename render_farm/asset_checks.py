"""What an asset file is, checked before Blender imports it (no ``bpy`` here: pure Python + numpy).

Scraped sets hold files that Blender imports "successfully" into a wrong render, or fails on with a message that
does not say why. :func:`check_asset` turns each into an :class:`AssetError` whose reason names the problem and the
fix, so the object is a recorded failure instead of a silently wrong sample:

- an HTML page or a Git-LFS pointer saved under an asset's name (a download that returned a web page or a pointer);
- a Draco-compressed glTF (``KHR_draco_mesh_compression``): the pip ``bpy`` wheel has no Draco decoder and its
  importer fails with ``Location: …/bpy/ops.py:109``;
- a glTF image or OBJ material/texture file that is missing (Blender renders such textures magenta) — with
  ``allow_missing_textures`` these become warnings, recorded in the sample's meta.json;
- non-finite (NaN/inf) glTF vertex positions, which Blender's importer replaces without a word.

A file whose container is damaged in other ways (a truncated GLB, invalid JSON) passes through: Blender's importer
reports those itself ("import failed: … Bad GLB …").
"""

from __future__ import annotations

import base64
import json
import os
import struct
import urllib.parse

import numpy as np

GLB_MAGIC = b"glTF"
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
DRACO = "KHR_draco_mesh_compression"
_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


class AssetError(Exception):
    """The asset cannot be rendered (unimportable, empty, too large, broken); the message says why."""


def _sniff(path: str, head: bytes) -> None:
    size = os.path.getsize(path)
    if head.startswith(LFS_POINTER):
        text = head.decode("utf-8", "replace")
        oid = next((ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("oid ")), "?")
        raise AssetError(f"{path} is a Git LFS pointer ({size} bytes, {oid}), not the asset: the file was never "
                         f"fetched from LFS; run `git lfs pull` in its repository or download the asset again")
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
            start.startswith(b"<") and b"<html" in start[:2048]):
        raise AssetError(f"{path} is an HTML page ({size} bytes), not a {os.path.splitext(path)[1]} asset: the "
                         f"download returned a web page (an error, login or redirect page); download the asset again")


def _glb_chunks(path: str) -> tuple[dict, bytes | None] | None:
    """(JSON, BIN chunk) of a GLB, or None when the container is damaged (left to Blender's importer)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 20 or data[:4] != GLB_MAGIC:
        return None
    total = struct.unpack_from("<I", data, 8)[0]
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != 0x4E4F534A or 20 + json_len > min(total, len(data)):
        return None
    try:
        doc = json.loads(data[20:20 + json_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    binary, at = None, 20 + json_len
    if at + 8 <= len(data):
        bin_len, bin_type = struct.unpack_from("<II", data, at)
        if bin_type == 0x004E4942 and at + 8 + bin_len <= len(data):
            binary = data[at + 8:at + 8 + bin_len]
    return doc, binary


def _local_file(base_dir: str, uri: str) -> str:
    return os.path.join(base_dir, urllib.parse.unquote(uri))


def _buffer(doc: dict, index: int, base_dir: str, glb_bin: bytes | None) -> bytes | None:
    buffers = doc.get("buffers") or []
    if not 0 <= index < len(buffers):
        return None
    uri = buffers[index].get("uri")
    if uri is None:
        return glb_bin if index == 0 else None
    if uri.startswith("data:"):
        try:
            return base64.b64decode(uri.split(",", 1)[1])
        except (IndexError, ValueError):
            return None
    path = _local_file(base_dir, uri)
    if not os.path.isfile(path):
        return None  # a missing .bin: Blender's importer names it
    with open(path, "rb") as f:
        return f.read()


def _non_finite_positions(doc: dict, base_dir: str, glb_bin: bytes | None) -> list[str]:
    """Where float POSITION accessors hold NaN/inf: ``mesh 'name' primitive k: n of m vertices``."""
    found = []
    accessors, views = doc.get("accessors") or [], doc.get("bufferViews") or []
    for m, mesh in enumerate(doc.get("meshes") or []):
        for p, prim in enumerate(mesh.get("primitives") or []):
            a = (prim.get("attributes") or {}).get("POSITION")
            if not isinstance(a, int) or not 0 <= a < len(accessors):
                continue
            acc = accessors[a]
            if acc.get("componentType") != 5126 or "bufferView" not in acc:  # float32 only; sparse-only: skip
                continue
            if not 0 <= acc["bufferView"] < len(views):
                continue
            view = views[acc["bufferView"]]
            buf = _buffer(doc, view.get("buffer", -1), base_dir, glb_bin)
            if buf is None:
                continue
            n, comps = int(acc.get("count", 0)), _COMPONENTS.get(acc.get("type"), 3)
            stride = view.get("byteStride") or 4 * comps
            start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
            if n == 0 or start + stride * (n - 1) + 4 * comps > len(buf):
                continue
            xyz = np.ndarray((n, comps), np.dtype("<f4"), buffer=buf, offset=start, strides=(stride, 4))
            bad = int((~np.isfinite(xyz)).any(axis=1).sum())
            if bad:
                found.append(f"mesh {mesh.get('name', m)!r} primitive {p}: {bad} of {n} vertices")
    return found


def _gltf_problems(path: str, allow_missing_textures: bool) -> list[str]:
    base_dir = os.path.dirname(path)
    if path.lower().endswith(".glb"):
        parsed = _glb_chunks(path)
        if parsed is None:
            return []
        doc, glb_bin = parsed
    else:
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return []
        glb_bin = None
    if not isinstance(doc, dict):
        return []
    extensions = set(doc.get("extensionsRequired") or []) | set(doc.get("extensionsUsed") or [])
    if DRACO in extensions:
        raise AssetError(
            f"{path} is Draco-compressed ({DRACO}); the pip bpy wheel has no Draco decoder. Decode its meshes "
            f"before rendering with a glTF tool that reads Draco and writes plain accessors (e.g. glTF-Transform or "
            f"gltfpack), or render with a full Blender 4.2 build, whose importer decodes Draco "
            f"(--custom-blender-path)")
    bad = _non_finite_positions(doc, base_dir, glb_bin)
    if bad:
        raise AssetError(f"{path} has non-finite (NaN/inf) vertex positions ({'; '.join(bad[:3])}); Blender would "
                         f"replace them silently and render a different shape: fix or drop the asset")
    missing = []
    for i, image in enumerate(doc.get("images") or []):
        uri = image.get("uri") if isinstance(image, dict) else None
        if uri and not uri.startswith("data:") and not os.path.isfile(_local_file(base_dir, uri)):
            missing.append(uri)
    return _missing_textures(path, missing, allow_missing_textures)


def _missing_textures(path: str, missing: list[str], allow: bool) -> list[str]:
    if not missing:
        return []
    shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    if not allow:
        raise AssetError(f"{path} references {len(missing)} missing texture file(s): {shown} (Blender would render "
                         f"them magenta); copy them next to the asset, or pass --allow-missing-textures "
                         f"(allow_missing_textures: true) to render without them and record a warning")
    return [f"missing texture file(s), rendered without them: {shown}"]


def _obj_problems(path: str, allow_missing_textures: bool) -> list[str]:
    """Missing ``mtllib`` files and ``map_*`` textures of an OBJ's materials."""
    base_dir, missing = os.path.dirname(path), []
    with open(path, "rb") as f:
        libs = [ln[7:].strip().decode("utf-8", "replace") for ln in f if ln.startswith(b"mtllib ")]
    for lib in libs:
        lib_path = os.path.join(base_dir, lib)
        if not os.path.isfile(lib_path):
            missing.append(lib)
            continue
        with open(lib_path, "rb") as f:
            for ln in f:
                words = ln.strip().split()
                if words and words[0].lower().startswith((b"map_", b"bump", b"disp", b"norm")) and len(words) > 1:
                    tex = words[-1].decode("utf-8", "replace")
                    if not os.path.isfile(os.path.join(base_dir, tex)):
                        missing.append(tex)
    return _missing_textures(path, missing, allow_missing_textures)


def check_asset(path: str, allow_missing_textures: bool = False) -> list[str]:
    """Raises :class:`AssetError` for the problems in the module docstring; returns warnings (missing textures when
    ``allow_missing_textures``) for the sample's meta.json."""
    with open(path, "rb") as f:
        head = f.read(4096)
    _sniff(path, head)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".glb", ".gltf"):
        return _gltf_problems(path, allow_missing_textures)
    if ext == ".obj":
        return _obj_problems(path, allow_missing_textures)
    return []
