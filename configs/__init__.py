"""The repository root, where the configs live, and the one reader of "the model block of a config file".

The YAML files beside this module are LightningCLI configs (``model/``, ``data/``, ``trainer/``, ``experiments/``),
DeepSpeed JSON (``deepspeed/``) and render-farm settings (``render/``). Code that needs a path inside the repository
builds it from :data:`ROOT`; code that needs a model's ``class_path`` and ``init_args`` outside LightningCLI (the demo,
evaluation, benchmarks, tests) calls :func:`load_model_block`, which reads a model YAML and an experiment YAML alike
(:func:`load_block` does the same for the data block).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

ROOT = Path(__file__).resolve().parent.parent  # the repository root
CONFIG_DIR = ROOT / "configs"
MODEL_DIR = CONFIG_DIR / "model"
DATA_DIR = CONFIG_DIR / "data"
TRAINER_DIR = CONFIG_DIR / "trainer"
EXPERIMENT_DIR = CONFIG_DIR / "experiments"
DEEPSPEED_DIR = CONFIG_DIR / "deepspeed"
RENDER_DIR = CONFIG_DIR / "render"


@dataclass
class Block:
    """A class as a LightningCLI config names it (a model or data module): its class path and its arguments."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the YAML file the block was read from


def load_model_block(path: Union[str, os.PathLike]) -> Block:
    """The model block of ``path``: a model YAML (``class_path`` + ``init_args`` at the top) or an experiment YAML
    (a ``model:`` key holding such a block inline, or the path of a model YAML relative to the experiment file, as
    LightningCLI resolves it)."""
    return load_block(path, "model")


def load_block(path: Union[str, os.PathLike], key: str) -> Block:
    """The ``key`` block (``model`` or ``data``) of a config file: the file itself when it is such a block (e.g.
    configs/data/tiny.yaml), else its ``key:`` entry, inline or the path of a YAML relative to ``path``."""
    path = Path(path)
    data = _read_yaml(path)
    if isinstance(data, dict) and key in data:  # an experiment (or any LightningCLI config with that key)
        block = data[key]
        if isinstance(block, (str, os.PathLike)):
            return load_block(path.parent / block, key)
        return _block(block, path, key, f"the '{key}' entry of ")
    return _block(data, path, key, "")


def _read_yaml(path: Path) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config {str(path)!r} not found: expected a model or data YAML (e.g. "
                                f"configs/model/lrm_tiny.yaml) or an experiment YAML (e.g. "
                                f"configs/experiments/lrm_tiny.yaml); relative paths are resolved from the current "
                                f"directory, {ROOT} is the repository") from None


def _block(data: Any, path: Path, key: str, where: str) -> Block:
    if not (isinstance(data, dict) and isinstance(data.get("class_path"), str)):
        found = f"keys {sorted(data)}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise ValueError(f"{where}{path} is not a {key} config: expected 'class_path' and 'init_args' (a {key} YAML "
                         f"such as configs/{key}/{'lrm_tiny' if key == 'model' else 'tiny'}.yaml) or a '{key}' key "
                         f"(an experiment YAML such as configs/experiments/lrm_tiny.yaml), found {found}")
    init_args = data.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{where}{path}: 'init_args' must be a mapping of the {key}'s arguments, got {init_args!r}")
    return Block(data["class_path"], dict(init_args), str(path))
