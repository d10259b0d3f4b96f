"""Reading checkpoints: tensors and plain data only, whoever wrote the file; and ``last.ckpt`` when a fit ends.

A checkpoint is a pickle, and unpickling a file can run any code its author put in it. Every checkpoint lift3d reads
(``lift3d evaluate --ckpt``, the ``--ckpt_path auto`` resume search, ``lift3d convert-checkpoint``, an explicit
``--ckpt_path``, a DeepSpeed resume) goes through :func:`load_checkpoint`: ``torch.load(weights_only=True)``, which
builds tensors, containers and primitive values and refuses every other global. What the files lift3d writes hold
besides that is allow-listed here and nowhere else (:data:`SAFE_DEEPSPEED_GLOBALS`: three plain data classes in ZeRO
optimizer files; Lightning checkpoints of lift3d's systems need none: their hyper-parameters are plain dicts).

* :func:`load_checkpoint` — one file, or :class:`CheckpointError` naming the file and why (not plain data / unreadable).
* :func:`check_checkpoint` — a file or a ZeRO checkpoint directory, every file of it read the same way; its step.
* :func:`weights_only_loads` — forces ``weights_only=True`` on the ``torch.load`` calls of code lift3d does not own
  (DeepSpeed's loaders, which pass ``weights_only=False``), for the duration of a ``with`` block.
* :class:`LastCheckpointOnFitEnd` — each ModelCheckpoint with ``save_last`` writes its ``last.ckpt`` at the step the
  fit ends on (Lightning writes it only on its own schedule: a 150-step run saving every 100 steps ended with a
  ``last.ckpt`` of step 100).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

# the non-tensor globals in the ZeRO files DeepSpeed writes (optimizer states): data classes and an enum, built by
# attribute assignment only (checked against real ZeRO-2 and ZeRO-3 checkpoints in tests/unit/lightning_modules)
SAFE_DEEPSPEED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                          "deepspeed.runtime.zero.config.ZeroStageEnum",
                          "deepspeed.utils.tensor_fragment.fragment_address")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as tensors and plain data; the message names the file and why."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"checkpoint {self.path}: {reason}")


def _deepspeed_globals() -> list:
    """The classes of :data:`SAFE_DEEPSPEED_GLOBALS` (DeepSpeed imported only when a ZeRO file is read)."""
    import importlib

    found = []
    for name in SAFE_DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # no (or another) DeepSpeed: its files are refused instead
            pass
    return found


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu", mmap: bool = True,
                    zero: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` (tensors memory-mapped when the file allows it), with DeepSpeed's data
    classes allowed when ``zero`` (a file of a ZeRO checkpoint directory). Raises :class:`CheckpointError` naming the
    file: "holds pickled objects that are not tensors or plain data" (a code payload, or a class this project does
    not allow) or "cannot be read" (truncated, not a checkpoint)."""
    allowed = _deepspeed_globals() if zero else []
    try:
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if not mmap or "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error: ", 1)[-1].split("\n", 1)[0].strip()
        found = re.search(r"GLOBAL (\S+)", detail)
        found = f"it names {found.group(1)}" if found else detail.split(" was not")[0][:200]
        raise CheckpointError(path, f"holds pickled objects that are not tensors or plain data ({found}); lift3d "
                                    "loads checkpoints as tensors only (torch.load weights_only=True) and will not run "
                                    "code from a file: use a checkpoint written by `lift3d fit`") from None
    except FileNotFoundError:
        raise CheckpointError(path, "does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory (a DeepSpeed ZeRO checkpoint?), not a checkpoint file") from None
    except Exception as exc:  # noqa: BLE001 - truncated, torn, not a torch file
        raise CheckpointError(path, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): the "
                                    "file is truncated or not a torch checkpoint") from None


def zero_files(path: Union[str, os.PathLike]) -> list[Path]:
    """Every ``*.pt`` file of a ZeRO checkpoint directory (``latest`` names the tag directory); [] for anything
    else."""
    from lightning_modules.launch.deepspeed import model_states_file

    states = model_states_file(path)
    return sorted(Path(p) for p in glob.glob(str(states.parent / "*.pt"))) if states is not None else []


def check_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """Reads ``path`` — a checkpoint file, or every file of a ZeRO checkpoint directory — as tensors and plain data
    (:func:`load_checkpoint`) and returns its Lightning state (for a directory: the client state in rank 0's model
    states, where ``global_step`` and the hyper-parameters are). :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        files = zero_files(path)
        if not files:
            raise CheckpointError(path, "is a directory but not a DeepSpeed ZeRO checkpoint (no 'latest' file naming "
                                        "a tag directory with *mp_rank_00_model_states.pt)")
        from lightning_modules.launch.deepspeed import model_states_file

        states = model_states_file(path)
        state = None
        for file in files:
            loaded = load_checkpoint(file, zero=True)
            if file == states:
                state = loaded
            del loaded
        if not isinstance(state, dict):
            raise CheckpointError(states or path, "is not a dict of model states")
        return state
    state = load_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a Lightning checkpoint (a dict)")
    return state


@contextlib.contextmanager
def weights_only_loads(zero: bool = True) -> Iterator[None]:
    """Every ``torch.load`` inside the block loads tensors and plain data only, whatever its caller passes
    (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, read by torch at each call), with DeepSpeed's data classes allowed when
    ``zero``. For loaders lift3d does not own; its own code calls :func:`load_checkpoint`."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_globals() if zero else []):
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def checkpoint_step(state: Any) -> Optional[int]:
    """``global_step`` of a loaded Lightning state, None when it has none."""
    step = state.get("global_step") if isinstance(state, dict) else None
    return int(step) if isinstance(step, int) else None


# --- writing: last.ckpt at the end of a fit ------------------------------------------------------------------------
class LastCheckpointOnFitEnd(L.Callback):
    """When a fit ends, each ``ModelCheckpoint(save_last=...)`` of the Trainer writes its ``last.ckpt`` at the final
    step unless it already did, through the callback itself (its file name, version counter and recorded
    ``last_model_path``). A fit that ends at ``max_steps`` is saved after its last batch, the state a step-scheduled
    save has, so a resume continues exactly as an uninterrupted run; any other end (``max_epochs``, a stop request)
    is saved in ``on_train_end``. Not after a pre-emption: its checkpoint (``hpc_ckpt_<n>.ckpt``) is the exact state
    at the stop and the resume prefers it. The callback's own schedule is left as it was: a save it makes at the same
    step still happens."""

    def __init__(self) -> None:
        self._saved_at: dict[int, int] = {}  # id(ModelCheckpoint) -> the step this callback saved its last.ckpt at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step:  # the fit loop stops after this batch
            self._save_last(trainer, keep_schedule=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_last(trainer, keep_schedule=False)

    def _save_last(self, trainer, keep_schedule: bool) -> None:
        from lightning_modules.launch.cluster import Preemption

        if trainer.global_step == 0 or trainer.fast_dev_run or trainer.sanity_checking \
                or any(isinstance(cb, Preemption) and cb.preempted for cb in trainer.callbacks):
            return
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.save_last:
                continue
            every = cb._every_n_train_steps
            if trainer.global_step in (cb._last_global_step_saved, self._saved_at.get(id(cb))) \
                    or (keep_schedule and every >= 1 and trainer.global_step % every == 0):
                continue  # saved already, or its own step schedule saves this step (after this hook)
            scheduled = cb._last_global_step_saved
            cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
            self._saved_at[id(cb)] = trainer.global_step
            if keep_schedule:  # an epoch-end save of its own at this step must not be skipped as "already saved"
                cb._last_global_step_saved = scheduled
