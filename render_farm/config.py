"""Render-farm configuration: a YAML in configs/render/ overridden by command-line flags.

Every problem with the settings is a :class:`RenderSettingsError` found before the first object is rendered, and
names where the bad value came from: the YAML file and key, or the command-line flag.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, cast

import yaml

from configs import RENDER_DIR
from geometry.rigs import RIGS


class RenderSettingsError(ValueError):
    """The render settings are unusable (a user error: the message names the file/key or flag and the fix)."""


# settings that decide what a rendered sample looks like: an output directory holds samples of one such set
OUTPUT_SETTINGS = ("engine", "resolution", "samples", "denoise", "lighting", "seed", "rig", "rig_options",
                   "depth_scale")
_FLAGS = {"timeout_s": "--timeout"}  # command-line spelling of a setting, where it is not --<name-with-dashes>


def flag_of(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass
class SceneSettings:
    """How Blender renders an object; declared once for the farm's :class:`RenderConfig` and the worker's
    :class:`RenderSettings`."""

    engine: str = "CYCLES"
    resolution: int = 512
    samples: int = 128
    denoise: bool = False
    lighting: str = "fixed"  # fixed | random
    seed: int = 0
    max_faces: int = 5_000_000
    gt_mesh_faces: int = 200_000  # the rendered geometry stored as mesh.npz, decimated above this many faces; 0: off


@dataclass
class RenderSettings(SceneSettings):
    """What a render worker's Blender takes for one object (``blender_scene.render_object``)."""

    threads: int = 0  # 0: Blender picks (all cores)
    world_strength: float = 0.6


@dataclass
class RenderConfig(SceneSettings):
    """A render run (configs/render/*.yaml + flags): the scene settings, the rig, depth encoding, worker limits."""

    rig: str = "lrm32"
    rig_options: dict = field(default_factory=dict)
    depth_scale: float = 5000.0  # uint16 steps of 0.2 mm: depths up to 13.1 (the framed rigs reach ~7.8)
    timeout_s: float = 600.0
    max_jobs_per_worker: int = 50
    max_file_mb: float = 1024.0
    shard_maxcount: int = 64
    threads_per_worker: int = 0
    allow_missing_textures: bool = False  # a missing texture image is a warning in meta.json instead of a failure

    def validate(self, source: str = "render config", origins: dict[str, str] | None = None) -> "RenderConfig":
        """Checks every setting's type and range and builds the rig once with ``rig_options``. Raises
        :class:`RenderSettingsError` naming each bad setting's origin (``origins``: setting -> flag; the others
        come from ``source``)."""
        origins = origins or {}

        def where(name: str) -> str:
            return origins.get(name) or f"{source}: {name}"

        problems = []
        for f in fields(self):
            problem = _type_problem(f, getattr(self, f.name))
            if problem:
                problems.append(f"{where(f.name)} {problem}")
        if problems:  # ranges and the rig need the right types
            raise RenderSettingsError("; ".join(problems))
        if self.engine != "CYCLES":
            problems.append(f"{where('engine')} {self.engine!r}: only CYCLES renders on CPU nodes")
        if self.rig not in RIGS:
            problems.append(f"{where('rig')} {self.rig!r}: expected one of {sorted(RIGS)}")
        if self.lighting not in ("fixed", "random"):
            problems.append(f"{where('lighting')} {self.lighting!r}: expected fixed or random")
        for name in ("resolution", "samples", "timeout_s", "max_jobs_per_worker", "shard_maxcount", "depth_scale",
                     "max_file_mb", "max_faces"):
            if getattr(self, name) <= 0:
                problems.append(f"{where(name)} must be positive, got {getattr(self, name)}")
        for name in ("threads_per_worker", "gt_mesh_faces"):
            if getattr(self, name) < 0:
                problems.append(f"{where(name)} must be 0 (automatic) or positive, got {getattr(self, name)}")
        if not problems:
            problems += self._rig_problems(where)
        if problems:
            raise RenderSettingsError("; ".join(problems))
        return self

    def _rig_problems(self, where) -> list[str]:
        """Builds the rig once, as every object will, so options that do not fit it fail here and not per object."""
        from geometry.rigs import make_rig

        try:
            make_rig(self.rig, "settings-check", self.resolution, self.seed, **self.rig_options)
        except (TypeError, ValueError) as exc:
            rig_fn = cast(Callable[..., Any], RIGS[self.rig])
            takes = [p for p in inspect.signature(rig_fn).parameters
                     if p not in ("object_id", "resolution", "seed")]
            return [f"{where('rig_options')} {self.rig_options} do not fit rig {self.rig!r} ({where('rig')}): {exc}; "
                    f"rig {self.rig} takes the options {takes} (rig_options: {{}} keeps its defaults)"]
        return []

    def fingerprint(self) -> dict:
        """The settings that decide what a rendered sample looks like (:data:`OUTPUT_SETTINGS`)."""
        return {name: getattr(self, name) for name in OUTPUT_SETTINGS}

    def blender_settings(self, threads: int) -> dict:
        """The keyword arguments of the worker's :class:`RenderSettings` (sent over a pipe as a dict)."""
        return {**{f.name: getattr(self, f.name) for f in fields(SceneSettings)}, "threads": threads}

    def to_dict(self) -> dict:
        return asdict(self)


_TYPES: dict[type, tuple[type | tuple[type, ...], str]] = {
    bool: (bool, "true or false"), int: (int, "an integer"), float: ((int, float), "a number"), str: (str, "a string"),
    dict: (dict, "a mapping, e.g. {num_views: 16}")}


def _type_problem(f, value) -> str | None:
    """Why ``value`` does not fit field ``f`` (the type of its default), or None."""
    default = f.default if f.default is not MISSING else f.default_factory()
    accepted, words = _TYPES[type(default)]
    if isinstance(value, accepted) and (isinstance(default, bool) or not isinstance(value, bool)):
        return None
    return f"must be {words}, got {value!r} ({type(value).__name__})"


def load_render_config(path: str | None = None, **overrides) -> RenderConfig:
    """The config at ``path`` (default: configs/render/default.yaml) with non-None ``overrides`` (command-line
    flags) applied. Raises :class:`RenderSettingsError` naming the file and key, or the flag, of each bad setting."""
    path = path or os.path.join(RENDER_DIR, "default.yaml")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"render config {path!r} not found; see configs/render/ for examples") from None
    except yaml.YAMLError as exc:
        raise RenderSettingsError(f"{path} is not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RenderSettingsError(f"{path}: expected a mapping of render settings (key: value lines), got "
                                  f"{type(data).__name__}; see configs/render/default.yaml")
    known = {f.name for f in fields(RenderConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RenderSettingsError(f"{path}: unknown render settings {unknown}; known settings: {sorted(known)}")
    flags = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise TypeError(f"load_render_config: unknown overrides {unknown}")
    data.update(flags)
    origins = {k: flag_of(k) for k in flags}
    return RenderConfig(**data).validate(path, origins)
