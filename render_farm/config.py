"""Render-farm configuration: a YAML in configs/render/ overridden by command-line flags."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

import yaml

from configs import RENDER_DIR
from geometry.rigs import RIGS


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
    depth_scale: float = 10000.0
    timeout_s: float = 600.0
    max_jobs_per_worker: int = 50
    max_file_mb: float = 1024.0
    shard_maxcount: int = 64
    threads_per_worker: int = 0

    def validate(self, source: str = "render config") -> "RenderConfig":
        problems = []
        if self.engine != "CYCLES":
            problems.append(f"engine {self.engine!r}: only CYCLES renders on CPU nodes")
        if self.rig not in RIGS:
            problems.append(f"rig {self.rig!r}: expected one of {sorted(RIGS)}")
        if self.lighting not in ("fixed", "random"):
            problems.append(f"lighting {self.lighting!r}: expected fixed or random")
        for name in ("resolution", "samples", "timeout_s", "max_jobs_per_worker", "shard_maxcount", "depth_scale"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError(f"{source}: " + "; ".join(problems))
        return self

    def blender_settings(self, threads: int) -> dict:
        """The keyword arguments of the worker's :class:`RenderSettings` (sent over a pipe as a dict)."""
        return {**{f.name: getattr(self, f.name) for f in fields(SceneSettings)}, "threads": threads}

    def to_dict(self) -> dict:
        return asdict(self)


def load_render_config(path: str | None = None, **overrides) -> RenderConfig:
    """The config at ``path`` (default: configs/render/default.yaml) with non-None ``overrides`` applied."""
    path = path or os.path.join(RENDER_DIR, "default.yaml")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"render config {path!r} not found; see configs/render/ for examples") from None
    known = {f.name for f in fields(RenderConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown render settings {unknown}; known settings: {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return RenderConfig(**data).validate(path)
