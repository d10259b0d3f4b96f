"""Asset sources: where the objects to render come from.

``LocalDirSource`` lists GLB/glTF/OBJ/PLY/STL/FBX files under a directory; ``ObjaverseSource`` goes through the
``objaverse`` 0.1.7 API (uids, annotations, LVIS categories, licence filter, ``load_objects`` into a cache).
Every source yields :class:`Asset` records sorted by uid; a uid is a valid shard key ([A-Za-z0-9_-]).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import difflib
import gzip
import hashlib
import http.client
import json
import os
import socket
import threading
import urllib.error
from dataclasses import dataclass, field

import objaverse

from render_farm.shards import KEY_RE, sanitise_key

SUPPORTED_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".fbx")


@dataclass
class Asset:
    uid: str
    path: str | None  # None until fetched (Objaverse downloads lazily)
    source: str
    licence: str = "unknown"
    metadata: dict = field(default_factory=dict)

    def sha256(self) -> str:
        if self.path is None:
            raise ValueError(f"asset {self.uid} from {self.source} has no local file yet: fetch it before hashing it")
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


def local_asset_id(relpath: str) -> str:
    """The object id of the asset at ``relpath`` (relative to the directory), a function of that path alone.

    A file at the top of the directory is its file name without the extension, made key-safe (``chair.glb`` ->
    ``chair``, ``my chair.v2.glb`` -> ``my_chair_v2``); a file in a subdirectory adds a short hash of its relative
    path (``batch2/chair.glb`` -> ``chair-<8 hex>``). Adding, removing or moving other files never changes an id, so
    a grown directory renders only its new files."""
    relpath = relpath.replace(os.sep, "/")
    stem = sanitise_key(os.path.splitext(os.path.basename(relpath))[0])
    if "/" not in relpath:
        return stem
    return f"{stem}-{hashlib.sha1(relpath.encode()).hexdigest()[:8]}"


class LocalDirSource:
    """Every supported file under ``root`` (recursively); uid = :func:`local_asset_id` of its relative path.

    Two files with the same id (``chair.glb`` and ``chair.obj`` side by side, or names that differ only in characters
    a key cannot hold) are refused with an error naming both: numbering them by what else is in the directory would
    rename an already rendered object when a file is added."""

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
                    found.append(os.path.relpath(os.path.join(dirpath, f), self.root))
        by_uid: dict[str, str] = {}
        clashes = []
        for rel in sorted(found):
            uid = local_asset_id(rel)
            if uid in by_uid:
                clashes.append(f"{by_uid[uid]!r} and {rel!r} (both {uid!r})")
            else:
                by_uid[uid] = rel
        if clashes:
            raise ValueError(
                f"--glb-dir {self.root!r}: {len(clashes)} pair(s) of files would be the same object: "
                f"{'; '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}. An object id is the file name "
                f"without extension (plus a path hash in subdirectories); rename one of each pair or move it into a "
                f"subdirectory")
        assets = [Asset(uid, os.path.join(self.root, rel), self.name, self.licence, {"relpath": rel})
                  for uid, rel in by_uid.items()]
        return sorted(assets, key=lambda a: a.uid)

    def fetch(self, assets: list[Asset]) -> list[Asset]:
        return assets


# --------------------------------------------------------------------------------------------------------------------
# Objaverse
# --------------------------------------------------------------------------------------------------------------------

_OFFLINE_VALUES = ("1", "true", "yes", "on")
# objaverse 0.1.7 keeps its cache location in module globals (BASE_PATH, _VERSIONED_PATH) that its functions read at
# call time; every call into it goes through ObjaverseSource._api(), which swaps them under this lock and restores them.
_OBJAVERSE_STATE_LOCK = threading.RLock()
# What a failed download raises: URLError/HTTPError/ContentTooShortError and socket errors are OSErrors;
# http.client.IncompleteRead & co. are HTTPExceptions.
_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


class ObjaverseError(RuntimeError):
    """Objaverse's metadata is unavailable (not cached and not downloadable) or a cached file is corrupt."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def _normalise_licence(value: str) -> str:
    v = str(value).strip().lower()
    return v[3:] if v.startswith("cc-") else v  # "CC-BY-SA" -> "by-sa", as in Objaverse's annotations


def _names(items) -> list[str]:
    """Objaverse annotations list tags/categories as dicts ({name, slug, uri}); keep the names."""
    out = []
    for item in items or []:
        out.append(str(item.get("name", item.get("slug", ""))) if isinstance(item, dict) else str(item))
    return out


def read_uids_file(path: str) -> list[str]:
    """One uid per line; blank lines and everything after '#' are ignored. Raises naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--uids-file {path!r} does not exist; pass a text file with one Objaverse uid per line"
        )
    uids = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            uid = line.split("#", 1)[0].strip()
            if not uid:
                continue
            if not KEY_RE.match(uid):
                raise ValueError(
                    f"{path}:{lineno}: {uid!r} is not a valid Objaverse uid (expected only letters, digits, '_' and "
                    f"'-', e.g. 8476c4170df24cf5bbe6967222d1a42d, without a file extension); fix or remove that line"
                )
            uids.append(uid)
    return uids


class ObjaverseSource:
    """Objects of Objaverse 1.0 through the ``objaverse`` 0.1.7 API.

    Selection: ``uids`` (a list) or ``uids_file`` (one per line, '#' comments) or, with neither, every uid of
    ``objaverse.load_uids()``; ``lvis_categories`` keeps the uids of those LVIS categories (intersected with the uids
    when both are given); ``licences`` is an allow-list on the annotation's ``license`` field (``by``, ``by-sa``,
    ``by-nc``, ``cc0``, ...; ``CC-BY`` is accepted for ``by``; None keeps all); ``limit`` keeps the first N uids in uid
    order after all filters. ``assets()`` lists them (sorted by uid, ``path=None``); ``fetch()`` downloads them.

    ``cache_dir`` is objaverse's ``BASE_PATH`` (default ``~/.objaverse``); files live in
    ``<cache_dir>/hf-objaverse-v1/`` exactly as in the hub dataset ``allenai/objaverse`` (``object-paths.json.gz``,
    ``metadata/<000-000>.json.gz``, ``lvis-annotations.json.gz``, ``glbs/<000-000>/<uid>.glb``), so a pre-staged copy
    is used as is.

    Offline (``offline=True``, or ``HF_HUB_OFFLINE=1`` in the environment when ``offline`` is None): nothing is
    downloaded; missing metadata raises :class:`ObjaverseError` listing the files to pre-stage, and objects missing
    from the cache come back from ``fetch`` with ``path=None``.

    Downloads: ``download_processes`` parallel downloads, run as threads that each call
    ``objaverse.load_objects([uid], download_processes=1)``. One call per uid means one failed download (reported
    with ``path=None`` and ``metadata["fetch_error"]``) cannot sink the others, and threads (unlike objaverse's own
    process pool) keep ``cache_dir`` whatever the multiprocessing start method. While a fetch runs, objaverse's
    ``_load_object_paths`` is memoised (it would re-read the ~800k-entry object-paths.json.gz on every call) and the
    process's default socket timeout is ``download_timeout`` seconds, so a stalled connection fails instead of hanging.
    """

    name = "objaverse"

    def __init__(
        self,
        uids: list[str] | None = None,
        uids_file: str | None = None,
        lvis_categories: list[str] | None = None,
        licences: list[str] | None = None,
        limit: int | None = None,
        cache_dir: str | None = None,
        download_processes: int = 1,
        offline: bool | None = None,
        download_timeout: float = 120.0,
    ):
        if uids is not None and uids_file is not None:
            raise ValueError("pass either uids or uids_file (--uids-file), not both")
        if uids_file is not None:
            uids = read_uids_file(uids_file)
            if not uids:
                raise ValueError(f"--uids-file {uids_file!r} lists no uids (only blank lines or '#' comments)")
        elif uids is not None:
            uids = list(uids)
            for i, uid in enumerate(uids):
                if not isinstance(uid, str) or not KEY_RE.match(uid):
                    raise ValueError(
                        f"uids[{i}] = {uid!r} is not a valid Objaverse uid (expected only letters, digits, '_' and "
                        f"'-', e.g. 8476c4170df24cf5bbe6967222d1a42d, without a file extension)"
                    )
            if not uids:
                raise ValueError("uids is an empty list; pass None to select every Objaverse uid")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        if not isinstance(download_processes, int) or download_processes < 1:
            raise ValueError(f"download_processes must be an integer >= 1, got {download_processes!r}")
        if download_timeout is not None and download_timeout <= 0:
            raise ValueError(f"download_timeout must be > 0 seconds (or None for no timeout), got {download_timeout!r}")
        if isinstance(licences, str) or isinstance(lvis_categories, str):
            raise TypeError("licences and lvis_categories are lists of strings, e.g. ['by', 'cc0'], not one string")
        self.uids = sorted(set(uids)) if uids is not None else None
        self.uids_file = uids_file
        self.lvis_categories = list(lvis_categories) if lvis_categories else None
        self.licences = sorted({_normalise_licence(x) for x in licences}) if licences else None
        self.limit = limit
        self.cache_dir = os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else objaverse.BASE_PATH
        self.versioned_dir = os.path.join(self.cache_dir, os.path.basename(objaverse._VERSIONED_PATH))
        self.download_processes = download_processes
        self.offline = _hub_offline() if offline is None else bool(offline)
        self.download_timeout = download_timeout
        self._object_paths: dict[str, str] | None = None

    # -- objaverse module state --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _api(self, timeout: bool = False):
        """Points objaverse at this cache (and memoises its object paths) for the duration of a call."""
        with _OBJAVERSE_STATE_LOCK:
            saved = (objaverse.BASE_PATH, objaverse._VERSIONED_PATH, objaverse._load_object_paths)
            saved_timeout = socket.getdefaulttimeout()
            objaverse.BASE_PATH, objaverse._VERSIONED_PATH = self.cache_dir, self.versioned_dir
            try:
                if self._object_paths is not None:
                    objaverse._load_object_paths = lambda: self._object_paths
                if timeout:
                    socket.setdefaulttimeout(self.download_timeout)
                yield
            finally:
                objaverse.BASE_PATH, objaverse._VERSIONED_PATH, objaverse._load_object_paths = saved
                socket.setdefaulttimeout(saved_timeout)

    def _stage_hint(self, files: list[str]) -> str:
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        return (
            f"copy {shown} of the hub dataset allenai/objaverse into {self.versioned_dir} (or point --cache-dir at a "
            f"pre-staged copy)"
        )

    def _call(self, what: str, files: list[str], fn, *args):
        """Runs one objaverse metadata call; turns missing/corrupt/undownloadable files into an ObjaverseError."""
        missing = [f for f in files if not os.path.exists(os.path.join(self.versioned_dir, f))]
        if missing and self.offline:
            raise ObjaverseError(
                f"Objaverse {what} is not in the cache {self.versioned_dir} and downloads are off (offline=True or "
                f"HF_HUB_OFFLINE=1): missing {', '.join(missing[:5])}; {self._stage_hint(missing)}"
            )
        try:
            return fn(*args)
        except (EOFError, json.JSONDecodeError, gzip.BadGzipFile) as exc:
            raise ObjaverseError(
                f"Objaverse {what} in {self.versioned_dir} is corrupt ({type(exc).__name__}: {exc}): delete "
                f"{', '.join(files[:5])} there so it is downloaded again, or re-copy it"
            ) from exc
        except _NETWORK_ERRORS as exc:
            raise ObjaverseError(
                f"could not download Objaverse {what} into {self.versioned_dir} ({type(exc).__name__}: {exc}); "
                f"check the network, or {self._stage_hint(missing or files)}"
            ) from exc

    def object_paths(self) -> dict[str, str]:
        """uid -> path inside the dataset (``glbs/<dir>/<uid>.glb``), read once per source."""
        if self._object_paths is None:
            with self._api():
                self._object_paths = self._call(
                    "object paths", ["object-paths.json.gz"], objaverse._load_object_paths
                )
        return self._object_paths

    # -- selection -----------------------------------------------------------------------------------------------------

    def _unknown_uid_error(self, unknown: list[str], total: int) -> ValueError:
        where = f" in --uids-file {self.uids_file!r}" if self.uids_file else ""
        shown = ", ".join(unknown[:5]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 5 else "")
        return ValueError(
            f"{len(unknown)} of {total} uids{where} are not Objaverse uids (not in object-paths.json.gz of "
            f"{self.versioned_dir}): {shown}; remove them or check for typos"
        )

    def _lvis_selection(self, object_paths: dict[str, str]) -> dict[str, str]:
        """uid -> LVIS category for the requested categories."""
        with self._api():
            lvis = self._call("LVIS annotations", ["lvis-annotations.json.gz"], objaverse.load_lvis_annotations)
        categories = self.lvis_categories or []  # called only when categories were given
        unknown = [c for c in categories if c not in lvis]
        if unknown:
            hints = []
            for c in unknown[:5]:
                close = difflib.get_close_matches(c, list(lvis), n=3)
                hints.append(f"{c!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
            raise ValueError(
                f"unknown LVIS categor{'y' if len(unknown) == 1 else 'ies'}: {', '.join(hints)}; "
                f"categories are LVIS names such as {', '.join(map(repr, sorted(lvis)[:3]))}"
            )
        selected: dict[str, str] = {}
        for category in sorted(categories):
            for uid in lvis[category]:
                if uid in object_paths:
                    selected.setdefault(uid, category)
        return selected

    def assets(self) -> list[Asset]:
        object_paths = self.object_paths()
        if self.uids is not None:
            unknown = [u for u in self.uids if u not in object_paths]
            if unknown:
                raise self._unknown_uid_error(unknown, len(self.uids))
            candidates = self.uids
        else:
            with self._api():
                candidates = objaverse.load_uids()
        lvis_of: dict[str, str] = {}
        if self.lvis_categories:
            lvis_of = self._lvis_selection(object_paths)
            candidates = [u for u in candidates if u in lvis_of]
        candidates = sorted(set(candidates))

        to_annotate = candidates if self.licences else candidates[: self.limit]
        metadata_files = sorted({f"metadata/{object_paths[u].split('/')[1]}.json.gz" for u in to_annotate})
        with self._api():
            annotations = self._call("annotations", metadata_files, objaverse.load_annotations, to_annotate)

        def licence_of(uid: str) -> str:
            ann = annotations.get(uid)
            return _normalise_licence(ann["license"]) if ann and ann.get("license") else "unknown"

        chosen = to_annotate
        if self.licences:
            chosen = [u for u in candidates if licence_of(u) in self.licences][: self.limit]
            if not chosen and candidates:
                seen = collections.Counter(licence_of(u) for u in candidates)
                raise ValueError(
                    f"no selected Objaverse object has a licence in {self.licences}; the {len(candidates)} candidates "
                    f"have {dict(seen.most_common())} (licences are Objaverse's 'license' values: by, by-sa, by-nc, "
                    f"by-nc-sa, by-nd, by-nc-nd, cc0)"
                )
        return [self._asset(u, annotations.get(u), lvis_of.get(u), licence_of(u), object_paths[u]) for u in chosen]

    def _asset(self, uid: str, ann: dict | None, lvis_category: str | None, licence: str, object_path: str) -> Asset:
        ann = ann or {}
        user = ann["user"] if isinstance(ann.get("user"), dict) else {}
        metadata = {
            "name": ann.get("name"),
            "lvis_category": lvis_category,
            "author": user.get("username"),
            "viewer_url": ann.get("viewerUrl"),
            "tags": _names(ann.get("tags")),
            "categories": _names(ann.get("categories")),
            "face_count": ann.get("faceCount"),
            "vertex_count": ann.get("vertexCount"),
            "object_path": object_path,
        }
        if not ann:
            metadata["annotation"] = "missing"
        return Asset(uid, None, self.name, licence, metadata)

    # -- download ------------------------------------------------------------------------------------------------------

    def _load_one(self, uid: str) -> tuple[str | None, str | None]:
        """Downloads one object through objaverse.load_objects; (path, None) or (None, reason)."""
        try:
            path = objaverse.load_objects([uid], download_processes=1).get(uid)
        except _NETWORK_ERRORS as exc:
            tmp = os.path.join(self.versioned_dir, self.object_paths()[uid] + ".tmp")  # memoised by fetch()
            if os.path.exists(tmp):
                os.remove(tmp)  # objaverse downloads to <file>.tmp and renames; drop the partial file
            return None, f"download failed: {type(exc).__name__}: {exc}"
        if path is None:
            return None, "objaverse.load_objects returned no path for this uid"
        return path, None

    def fetch(self, assets: list[Asset]) -> list[Asset]:
        """Returns the assets (same order) with ``path`` filled; failures keep ``path=None`` and say why in
        ``metadata["fetch_error"]`` so the farm can record them instead of crashing."""
        object_paths = self.object_paths()
        results: dict[str, tuple[str | None, str | None]] = {}
        cached, missing = [], []
        for a in assets:
            if a.uid not in object_paths:
                results[a.uid] = (None, f"unknown uid: not in object-paths.json.gz of {self.versioned_dir}")
            elif os.path.exists(os.path.join(self.versioned_dir, object_paths[a.uid])):
                cached.append(a.uid)
            else:
                missing.append(a.uid)
        missing = sorted(set(missing))
        with self._api(timeout=True):
            if cached:  # already in the cache: load_objects only looks them up
                found = objaverse.load_objects(sorted(set(cached)), download_processes=1)
                for uid in cached:
                    results[uid] = (found[uid], None) if uid in found else (None, "not returned by load_objects")
            if missing and self.offline:
                for uid in missing:
                    results[uid] = (None, f"not in the cache {self.versioned_dir} and downloads are off (offline=True "
                                          f"or HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE or pre-stage "
                                          f"{object_paths[uid]}")
            elif missing:
                with concurrent.futures.ThreadPoolExecutor(max_workers=self.download_processes) as pool:
                    for uid, result in zip(missing, pool.map(self._load_one, missing)):
                        results[uid] = result
        out = []
        for a in assets:
            path, reason = results[a.uid]
            metadata = dict(a.metadata)
            if reason is not None:
                metadata["fetch_error"] = reason
            else:
                metadata.pop("fetch_error", None)
            out.append(dataclasses.replace(a, path=path, metadata=metadata))
        return out
