"""DeepSpeed ZeRO through Lightning: the config files of configs/deepspeed, and ZeRO checkpoint conversion.

    lift3d fit --config configs/experiments/lrm_paper.yaml                     # ZeRO-2 (the paper default)
    lift3d fit --config configs/experiments/lrm_paper.yaml --trainer configs/trainer/deepspeed_zero3_offload.yaml
    lift3d convert-checkpoint logs/lrm_paper/checkpoints/last.ckpt last-fp32.ckpt

``DeepSpeedStrategy`` is Lightning's own strategy; the only difference is its ``config`` argument: a path to a
DeepSpeed JSON that is resolved as given, else relative to the repository root (so ``configs/deepspeed/zero2.json``
in a YAML works from any directory), read and checked here with an error that names the file. Lightning fills in
what the Trainer owns (``train_micro_batch_size_per_gpu`` from the train loader, ``gradient_clipping`` from
``gradient_clip_val``, ``gradient_accumulation_steps`` from ``accumulate_grad_batches``), so the JSON files leave
those out. Activation checkpointing is the LRM's own switch (``model.init_args.encoder.grad_checkpointing`` and
``model.init_args.transformer.grad_checkpointing``), not DeepSpeed's ``activation_checkpointing`` section.

With DeepSpeed, Lightning saves a checkpoint as a *directory* ``<name>.ckpt/`` of ZeRO shards (one per rank).
``convert_checkpoint`` turns it into one ordinary ``.ckpt`` file (fp32 weights + the Lightning state) that
``LRMModule.load_from_checkpoint`` and ``lift3d predict --ckpt_path`` read without DeepSpeed.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.fabric.plugins import ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeedStrategy

from configs import ROOT

# what Lightning sets from the Trainer and refuses to find in the JSON (it keeps the JSON's micro batch size and
# gradient_clipping over the Trainer's instead: configs/deepspeed leaves those out)
TRAINER_OWNED = {"gradient_accumulation_steps": "Trainer(accumulate_grad_batches=...)"}


def resolve_config_path(path: Union[str, os.PathLike]) -> Path:
    """``path`` as given when it exists, else relative to the repository root; an error naming both otherwise."""
    given = Path(path).expanduser()
    for candidate in (given, ROOT / given):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"DeepSpeed config {str(path)!r} not found (looked at {given.resolve()} and {(ROOT / given).resolve()}): "
        f"pass a path to a DeepSpeed JSON file, e.g. configs/deepspeed/zero2.json or configs/deepspeed/"
        f"zero3_offload.json (relative paths are tried from the current directory, then from the repository root)")


def load_deepspeed_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The DeepSpeed JSON at ``path`` (see ``resolve_config_path``), checked for what Lightning needs of it."""
    file = resolve_config_path(path)
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"DeepSpeed config {file} is not valid JSON ({exc}): fix the file; "
                         f"configs/deepspeed/zero2.json is a working example") from None
    if not isinstance(config, dict):
        raise ValueError(f"DeepSpeed config {file}: expected a JSON object ({{...}}), got {type(config).__name__}")
    for key, owner in TRAINER_OWNED.items():
        if key in config:
            raise ValueError(f"DeepSpeed config {file} sets {key!r}, which Lightning sets from {owner}: remove it "
                             f"from the JSON and set it on the Trainer")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict) or zero.get("stage", 0) not in (0, 1, 2, 3):
        raise ValueError(f"DeepSpeed config {file}: zero_optimization must be an object with stage 0-3, got {zero!r}")
    return config


class DeepSpeedStrategy(_LightningDeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` configured by a DeepSpeed JSON: ``config`` is a path resolved from the current
    directory or the repository root (``configs/deepspeed/zero2.json``), or a dict.

    The ZeRO, offload and activation-checkpointing keyword arguments of Lightning's class are left out on purpose:
    Lightning ignores them whenever a config is given, so the JSON is the one place for them. What remains is passed
    to Lightning unchanged."""

    def __init__(self, config: Union[str, Path, dict[str, Any]] = "configs/deepspeed/zero2.json", *,
                 accelerator: Optional[Accelerator] = None, parallel_devices: Optional[list[torch.device]] = None,
                 cluster_environment: Optional[ClusterEnvironment] = None, precision_plugin: Optional[Precision] = None,
                 process_group_backend: Optional[str] = None, timeout: Optional[timedelta] = default_pg_timeout,
                 logging_level: int = logging.WARNING, remote_device: Optional[str] = None,
                 load_full_weights: bool = False, exclude_frozen_parameters: bool = False):
        self.config_path: Optional[Path] = None
        if not isinstance(config, dict):
            self.config_path = resolve_config_path(config)
            config = load_deepspeed_config(self.config_path)
        super().__init__(config=config, accelerator=accelerator, parallel_devices=parallel_devices,
                         cluster_environment=cluster_environment, precision_plugin=precision_plugin,
                         process_group_backend=process_group_backend, timeout=timeout, logging_level=logging_level,
                         remote_device=remote_device, load_full_weights=load_full_weights,
                         exclude_frozen_parameters=exclude_frozen_parameters)

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict[str, Any]:
        """Lightning's load (DeepSpeed's engine reads the ZeRO files, with ``weights_only=False`` of its own), after
        every file of the checkpoint was read as tensors and plain data (``checkpoints.check_checkpoint``: an error
        naming the file otherwise) and with ``weights_only=True`` forced on DeepSpeed's reads."""
        from lightning_modules.launch.checkpoints import check_checkpoint, weights_only_loads

        check_checkpoint(checkpoint_path)
        with weights_only_loads():
            return super().load_checkpoint(checkpoint_path, weights_only=True)


# --- checkpoints ------------------------------------------------------------------------------------------------
def model_states_file(path: Union[str, os.PathLike]) -> Optional[Path]:
    """Rank 0's model-states file of a checkpoint directory as Lightning's DeepSpeedStrategy writes it (it holds the
    Lightning client state: ``global_step``, hyper-parameters, ...): ``<name>.ckpt/`` with a ``latest`` file naming a
    tag directory (Lightning's tag: ``checkpoint``) that holds ``mp_rank_00_model_states.pt`` (stages 1-2) or
    ``zero_pp_rank_0_mp_rank_00_model_states.pt`` (stage 3). None for anything else."""
    path = Path(path)
    latest = path / "latest"
    if not path.is_dir() or not latest.is_file():
        return None
    tag_dir = path / latest.read_text().strip()
    found = sorted(glob.glob(str(tag_dir / "*mp_rank_00_model_states.pt"))) if tag_dir.is_dir() else []
    return Path(found[0]) if found else None


def is_zero_checkpoint(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a ZeRO checkpoint directory (see ``model_states_file``) with the ranks'
    ``*_optim_states.pt`` beside the model states."""
    states = model_states_file(path)
    return states is not None and bool(glob.glob(str(states.parent / "*_optim_states.pt")))


def _describe(path: Path) -> str:
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is a file, not a directory (a plain Lightning checkpoint needs no conversion)"
    entries = sorted(p.name for p in path.iterdir())[:8]
    return f"it holds {entries or 'nothing'}"


def convert_checkpoint(zero_dir: Union[str, os.PathLike], out_file: Union[str, os.PathLike]) -> Path:
    """Consolidates the ZeRO shards of ``zero_dir`` into one fp32 Lightning checkpoint ``out_file`` (Lightning's
    ``convert_zero_checkpoint_to_fp32_state_dict``), checks it and returns its path. Every file of ``zero_dir`` is
    read as tensors and plain data only: a file holding anything else (pickled code) is refused, naming it
    (``CheckpointError``, a ValueError)."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    from lightning_modules.launch.checkpoints import check_checkpoint, weights_only_loads

    zero_dir, out_file = Path(zero_dir), Path(out_file)
    if not is_zero_checkpoint(zero_dir):
        raise ValueError(f"{zero_dir} is not a DeepSpeed ZeRO checkpoint: expected a directory such as "
                         f"logs/<run>/checkpoints/last.ckpt/ with a 'latest' file and <tag>/mp_rank_00_model_states.pt "
                         f"+ *_optim_states.pt (what Lightning's DeepSpeedStrategy saves), but {_describe(zero_dir)}")
    if out_file.resolve() == zero_dir.resolve() or out_file.is_dir():
        raise ValueError(f"output {out_file} is a directory: give a new file name, e.g. {zero_dir.name}-fp32.ckpt")
    check_checkpoint(zero_dir)  # every shard as tensors and plain data, or a CheckpointError naming the file
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with weights_only_loads():  # DeepSpeed's loader passes weights_only=False; the files are read tensors-only anyway
        checkpoint = convert_zero_checkpoint_to_fp32_state_dict(str(zero_dir), str(out_file))
    state = checkpoint.get("state_dict") or {}
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and v.dtype != torch.float32]
    if not state or bad:
        raise RuntimeError(f"converting {zero_dir} gave {'no weights' if not state else f'non-fp32 tensors {bad[:4]}'}"
                           f": the checkpoint is incomplete; convert the directory of a finished save")
    if "hyper_parameters" not in checkpoint:
        print(f"warning: {zero_dir} has no hyper_parameters: load {out_file} with "
              f"Module.load_from_checkpoint(path, <the model's arguments>)", file=sys.stderr)
    return out_file


def convert_main(argv: Optional[list[str]] = None) -> Path:
    """``lift3d convert-checkpoint ZERO_DIR OUT.ckpt``."""
    p = argparse.ArgumentParser(
        prog="lift3d convert-checkpoint",
        description="Consolidate a DeepSpeed ZeRO checkpoint directory (as Lightning's DeepSpeedStrategy saves it) "
                    "into one fp32 .ckpt that a plain LightningModule loads (load_from_checkpoint, lift3d predict "
                    "--ckpt_path).")
    p.add_argument("zero_dir", help="the checkpoint directory, e.g. logs/lrm_paper/checkpoints/last.ckpt")
    p.add_argument("out", help="the single-file checkpoint to write, e.g. last-fp32.ckpt")
    args = p.parse_args(argv)
    try:
        out = convert_checkpoint(args.zero_dir, args.out)
    except (ValueError, RuntimeError) as exc:
        p.exit(2, f"lift3d convert-checkpoint: error: {exc}\n")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    convert_main()
