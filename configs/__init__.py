"""The repository root, where the configs live, and the one reader of "the model block of a config file".

The YAML files beside this module are LightningCLI configs (``model/``, ``data/``, ``trainer/``, ``experiments/``),
DeepSpeed JSON (``deepspeed/``) and render-farm settings (``render/``). Code that needs a path inside the repository
builds it from :data:`ROOT`; code that needs a model's ``class_path`` and ``init_args`` outside LightningCLI (the demo,
evaluation, benchmarks, tests) calls :func:`load_model_block`, which reads a model YAML and an experiment YAML alike.
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
class ModelBlock:
    """A LightningModule as a config names it: its class path and the arguments it is built with."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the YAML file the block was read from


def load_model_block(path: Union[str, os.PathLike]) -> ModelBlock:
    """The model block of ``path``: a model YAML (``class_path`` + ``init_args`` at the top) or an experiment YAML
    (a ``model:`` key holding such a block inline, or the path of a model YAML relative to the experiment file, as
    LightningCLI resolves it)."""
    path = Path(path)
    data = _read_yaml(path)
    if isinstance(data, dict) and "model" in data:  # an experiment (or any LightningCLI config with a model)
        model = data["model"]
        if isinstance(model, str):
            return load_model_block(path.parent / model)
        return _block(model, path, "the 'model' block of ")
    return _block(data, path, "")


def _read_yaml(path: Path) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config {str(path)!r} not found: expected a model YAML (e.g. "
                                f"{MODEL_DIR.relative_to(ROOT) / 'lrm_tiny.yaml'}) or an experiment YAML (e.g. "
                                f"{EXPERIMENT_DIR.relative_to(ROOT) / 'lrm_tiny.yaml'})") from None


def _block(data: Any, path: Path, where: str) -> ModelBlock:
    if not (isinstance(data, dict) and isinstance(data.get("class_path"), str)):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{where}{path} is not a model config: expected 'class_path' and 'init_args' (a model YAML "
                         f"such as configs/model/lrm_tiny.yaml) or a 'model' key (an experiment YAML such as "
                         f"configs/experiments/lrm_tiny.yaml), found {keys}")
    init_args = data.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{where}{path}: 'init_args' must be a mapping of the model's arguments, got {init_args!r}")
    return ModelBlock(data["class_path"], dict(init_args), str(path))
