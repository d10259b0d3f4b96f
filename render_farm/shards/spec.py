"""The constants of shard format v1: format tag, sample keys, member names (docs/DESIGN.md "Shard format v1").

A sample is one object: ``<key>.<member>`` entries of a tar, grouped by key. WebDataset splits a member name at
its first dot, so a key holds only ``[A-Za-z0-9_-]``; view members are numbered with three digits.
"""

from __future__ import annotations

import os
import re

FORMAT = "lift3d-shard-v1"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_NOT_KEY_CHAR = re.compile(r"[^A-Za-z0-9_-]")

META = "meta.json"
CAMERAS = "cameras.npz"
VIEW_KINDS = ("rgba", "depth", "normal")  # NNN.rgba.png, NNN.depth.png, optional NNN.normal.png
#: Optional: the geometry exactly as Blender rendered it (evaluated: modifiers, skinning, the rendered pose/frame), in
#: the normalised world of the cameras, as a compressed ``.npz`` (``np.savez_compressed``) of ``vertices`` float32
#: (V, 3) and ``faces`` int32 (F, 3) triangles; decimated above the render setting ``gt_mesh_faces``. Samples without
#: it (older shards, MVImgNet, Zero123) stay valid.
GT_MESH = "mesh.npz"
MAX_VIEWS = 1000  # three-digit view numbers


def view_member(view: int, kind: str) -> str:
    """The member name of one view's PNG, e.g. ``view_member(7, "depth") == "007.depth.png"``."""
    return f"{int(view):03d}.{kind}.png"


def check_key(key: str) -> str:
    """``key`` if it follows the key rule, else ValueError naming it (readers raise it as a corrupt sample)."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValueError(f"sample key {key!r} must match [A-Za-z0-9_-]+ (no dots: WebDataset splits keys at dots)")
    return key


def sanitise_key(name: str) -> str:
    """``name`` as a valid sample key: every character outside ``[A-Za-z0-9_-]`` becomes ``_`` ("" becomes "_")."""
    return _NOT_KEY_CHAR.sub("_", name) or "_"


def safe_output_path(out_dir: str, name: str, suffix: str = "") -> str:
    """``out_dir/<name><suffix>``, the one way a command names a per-object output file (renders, meshes,
    predictions, demo images) after a sample's key or an input's name.

    ``name`` must be one plain path component: not empty, no NUL, no ``/`` or ``\\``, not ``.`` or ``..``, not
    absolute; and the resolved path (symbolic links followed) must lie directly in the resolved ``out_dir``. A
    ValueError names the bad name otherwise, so a hostile key such as ``../../x`` or ``/abs/path/x`` can never write
    outside ``out_dir``. Keys that pass :func:`check_key` always pass here."""
    text = str(name)
    problem = ("is empty" if not text else "holds a NUL character" if "\0" in text or "\0" in suffix
               else "is absolute" if os.path.isabs(text)
               else "holds a path separator" if "/" in text or "\\" in text or "/" in suffix or "\\" in suffix
               else "is a relative directory name" if text in (".", "..") else None)
    if problem is None:
        root = os.path.realpath(out_dir)
        if os.path.dirname(os.path.realpath(os.path.join(root, text + suffix))) != root:
            problem = "resolves outside the output directory (a symbolic link?)"
    if problem is not None:
        raise ValueError(f"output name {text + suffix!r} {problem}: refusing to write outside {out_dir!r}; per-object "
                         "files are named by sample keys, which hold only [A-Za-z0-9_-] (render_farm.shards.check_key)")
    return os.path.join(out_dir, text + suffix)
