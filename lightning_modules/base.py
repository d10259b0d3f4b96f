"""ReconstructionModule: what the two systems (``lrm.LRMModule``, ``one2345.One2345Module``) share, held once.

* **Settings.** A system's ``__init__`` arguments are of two kinds: the trained model's (architecture, losses,
  optimisation: saved in the checkpoint's ``hparams``) and the run's (``RUNTIME``: mesh extraction, where predictions
  go, the single-image front end). Run-time settings stay out of checkpoints — LightningCLI re-applies a checkpoint's
  hparams over the command line, which would override ``lift3d predict --model.init_args.predict_dir ...`` — and live
  as validated attributes instead. :meth:`save_settings` splits the two; :meth:`set_runtime` changes run-time ones
  later (``lift3d evaluate`` takes them from a model YAML and its command line).
* **Per-step reseeding.** :meth:`seed_step` draws the RNG from (seed, step, rank) only, so a resumed run repeats the
  uninterrupted run's random draws exactly; a system's ``training_step`` calls it first.
* **Logging.** The training terms (``train/loss`` averaged over ranks), the gradient norm before each optimiser step
  and the learning rate after each batch.
* **Validation and test** run the system's ``evaluate_batch`` under the stage's name.
* **Visuals.** :meth:`first_samples` cuts the batch the ``VisualLogger`` shows.
* **Prediction.** ``predict_step`` returns :class:`lightning_modules.prediction.Prediction` records; the files are
  written by :class:`lightning_modules.prediction.PredictionWriter` (``lift3d predict`` adds one).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm

MESH_FORMATS = ("glb", "obj", "ply")


class ReconstructionModule(L.LightningModule):
    """Base of the systems. Subclasses define ``net`` (the network), ``evaluate_batch(batch, stage)``, and list their
    run-time ``__init__`` arguments in ``RUNTIME`` (validated by :meth:`check_runtime`)."""

    # __init__ arguments that are settings of a run, not of the trained model: kept out of checkpoints
    RUNTIME: ClassVar[tuple[str, ...]] = ("mesh_resolution", "mesh_format", "predict_dir")

    net: torch.nn.Module

    # --- settings ------------------------------------------------------------------------------------------------
    def save_settings(self) -> None:
        """Called in a subclass's ``__init__`` after ``super().__init__()``: its arguments except ``RUNTIME`` go to
        ``hparams`` (and the checkpoint), the ``RUNTIME`` ones to validated attributes."""
        caller = inspect.currentframe().f_back
        args = caller.f_locals
        missing = [name for name in self.RUNTIME if name not in args]
        if missing:
            raise TypeError(f"{type(self).__name__}.RUNTIME names {missing}, which are not arguments of its __init__: "
                            "list only __init__ arguments there")
        self.save_hyperparameters(ignore=list(self.RUNTIME), frame=caller)
        self.set_runtime(**{name: args[name] for name in self.RUNTIME})

    @classmethod
    def runtime_settings(cls, init_args: Mapping[str, Any]) -> dict[str, Any]:
        """The run-time settings among a config's ``init_args`` (e.g. a model YAML's), the rest left out."""
        return {name: init_args[name] for name in cls.RUNTIME if name in init_args}

    def set_runtime(self, **settings: Any) -> None:
        """Sets run-time settings (names from ``RUNTIME``), each validated by :meth:`check_runtime`."""
        unknown = sorted(set(settings) - set(self.RUNTIME))
        if unknown:
            raise ValueError(f"{unknown} are not run-time settings of {type(self).__name__}; those are "
                             f"{list(self.RUNTIME)} (the others are fixed when the model is built)")
        for name, value in settings.items():
            setattr(self, name, self.check_runtime(name, value))

    def check_runtime(self, name: str, value: Any) -> Any:
        """The value to keep for run-time setting ``name``; raises ValueError naming a bad one. Subclasses extend."""
        if name == "mesh_format" and value not in MESH_FORMATS:
            raise ValueError(f"mesh_format {value!r}: expected glb, obj or ply")
        if name == "mesh_resolution" and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            raise ValueError(f"mesh_resolution must be an integer >= 2, got {value!r}")
        return value

    # --- training ------------------------------------------------------------------------------------------------
    def seed_step(self) -> None:
        """Random draws (ray samples, jitter) that depend on (seed, step, rank) only: resumed runs repeat them."""
        torch.manual_seed(self.hparams.seed * 1_000_003 + self.global_step * 1009 + self.global_rank)

    def log_train_terms(self, terms: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """Logs ``train/<term>``; returns ``terms["loss"]``. The loss is averaged over ranks (one scalar all-reduce:
        the curve of the global batch); the other terms are rank zero's."""
        terms = dict(terms)
        loss = terms.pop("loss")
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = grad_norm(self.net, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"], batch_size=1)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)

    # --- validation and test -------------------------------------------------------------------------------------
    def evaluate_batch(self, batch: dict, stage: str) -> None:
        """Logs ``<stage>/<metric>`` of a held-out batch (``val`` or ``test``)."""
        raise NotImplementedError(f"{type(self).__name__} must define evaluate_batch(batch, stage)")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    # --- visuals -------------------------------------------------------------------------------------------------
    @staticmethod
    def first_samples(batch: dict, max_samples: int) -> dict:
        """The batch cut to its first ``max_samples`` objects (tensors and lists; other entries as they are)."""
        return {k: v[:max_samples] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
