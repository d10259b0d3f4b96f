"""The constants of shard format v1: format tag, sample keys, member names (docs/DESIGN.md "Shard format v1").

A sample is one object: ``<key>.<member>`` entries of a tar, grouped by key. WebDataset splits a member name at
its first dot, so a key holds only ``[A-Za-z0-9_-]``; view members are numbered with three digits.
"""

from __future__ import annotations

import re

FORMAT = "lift3d-shard-v1"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_NOT_KEY_CHAR = re.compile(r"[^A-Za-z0-9_-]")

META = "meta.json"
CAMERAS = "cameras.npz"
VIEW_KINDS = ("rgba", "depth", "normal")  # NNN.rgba.png, NNN.depth.png, optional NNN.normal.png
MAX_VIEWS = 1000  # three-digit view numbers


def view_member(view: int, kind: str) -> str:
    """The member name of one view's PNG, e.g. ``view_member(7, "depth") == "007.depth.png"``."""
    return f"{int(view):03d}.{kind}.png"


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise ValueError(f"sample key {key!r} must match [A-Za-z0-9_-]+ (no dots: WebDataset splits keys at dots)")
    return key


def sanitise_key(name: str) -> str:
    """``name`` as a valid sample key: every character outside ``[A-Za-z0-9_-]`` becomes ``_`` ("" becomes "_")."""
    return _NOT_KEY_CHAR.sub("_", name) or "_"
