"""Asset sources: where the objects to render come from.

``LocalDirSource`` lists GLB/glTF/OBJ/PLY/STL/FBX files under a directory; ``ObjaverseSource`` goes through the
``objaverse`` 0.1.7 API (uids, annotations, LVIS categories, licence filter, ``load_objects`` into a cache).
Every source yields :class:`Asset` records sorted by uid; a uid is a valid shard key ([A-Za-z0-9_-]).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

SUPPORTED_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".fbx")


@dataclass
class Asset:
    uid: str
    path: str | None  # None until fetched (Objaverse downloads lazily)
    source: str
    licence: str = "unknown"
    metadata: dict = field(default_factory=dict)

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


def sanitize_uid(name: str) -> str:
    uid = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return uid or "asset"


class LocalDirSource:
    """Every supported file under ``root`` (recursively); uid = file stem made key-safe, de-duplicated by path hash."""

    name = "local"

    def __init__(self, root: str, licence: str = "unknown"):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--glb-dir {root!r} is not a directory; pass the folder that holds your assets")
        self.root, self.licence = root, licence

    def assets(self) -> list[Asset]:
        found = []
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                if f.lower().endswith(SUPPORTED_EXTENSIONS):
                    found.append(os.path.join(dirpath, f))
        by_uid: dict[str, list[str]] = {}
        for path in sorted(found):
            by_uid.setdefault(sanitize_uid(os.path.splitext(os.path.basename(path))[0]), []).append(path)
        assets = []
        for uid, paths in by_uid.items():
            for path in paths:
                rel = os.path.relpath(path, self.root)
                unique = uid if len(paths) == 1 else f"{uid}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
                assets.append(Asset(unique, path, self.name, self.licence, {"relpath": rel}))
        return sorted(assets, key=lambda a: a.uid)

    def fetch(self, assets: list[Asset]) -> list[Asset]:
        return assets
