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
* **Non-finite steps.** A step whose loss or gradient norm is NaN/inf on any rank is dropped (no optimiser update) and
  counted (``train/skipped_steps``); ``max_nonfinite_steps`` of them in a row stop the run with
  :class:`NonFiniteTrainingError` naming the step (:meth:`skip_nonfinite_step`).
* **Validation and test** run the system's ``evaluate_batch`` under the stage's name.
* **Visuals.** :meth:`first_samples` cuts the batch the ``VisualLogger`` shows.
* **Input settings.** Checkpoints record how the training data prepared the input (the datamodule's
  ``input_settings``: size, framing, background); ``lift3d predict`` prepares images the same way.
* **Prediction.** ``predict_step`` returns :class:`lightning_modules.prediction.Prediction` records; the files are
  written by :class:`lightning_modules.prediction.PredictionWriter` (``lift3d predict`` adds one).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Optional

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.plugins.precision import DeepSpeedPrecision

MESH_FORMATS = ("glb", "obj", "ply")
log = logging.getLogger(__name__)


def total_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The total 2-norm of ``grads``, as ``torch.nn.utils.get_total_norm`` gives it (a NaN/inf gradient gives NaN/inf).

    On a CPU, fp32/fp64 gradients' squares are summed by BLAS dot products, one a tensor, totalled in fp64: one pass at
    memory speed, where torch's norm kernel took 1.8× as long over lrm_small's gradients (≈ 30–40 ms a step on 2
    threads; BENCHMARKS.md, peer section), and closer to the fp64 norm (a 2.4 M-element tensor: 7e-7 relative against
    the kernel's 4e-5). Elsewhere (a GPU's fused multi-tensor norm; bf16/fp16 gradients) it is torch's."""
    if grads and all(g.device.type == "cpu" and g.dtype in (torch.float32, torch.float64) and g.layout == torch.strided
                     for g in grads):
        squares = torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)).double() for g in grads])
        return squares.sum().sqrt().to(grads[0].dtype)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


class NonFiniteTrainingError(RuntimeError):
    """Training stopped: ``max_nonfinite_steps`` optimiser steps in a row had a NaN/inf loss or gradient norm."""


class ReconstructionModule(L.LightningModule):
    """Base of the systems. Subclasses define ``net`` (the network), ``evaluate_batch(batch, stage)``, and list their
    run-time ``__init__`` arguments in ``RUNTIME`` (validated by :meth:`check_runtime`)."""

    # __init__ arguments that are settings of a run, not of the trained model: kept out of checkpoints
    RUNTIME: ClassVar[tuple[str, ...]] = ("mesh_resolution", "mesh_format", "predict_dir")

    net: torch.nn.Module
    hparams: AttributeDict  # what save_hyperparameters stores (Lightning's annotation widens it to a mapping)
    # the RUNTIME settings above, set by set_runtime
    mesh_resolution: int
    mesh_format: str
    predict_dir: str

    #: optimiser steps in a row with a NaN/inf loss or gradient norm (each one dropped) that stop a run
    max_nonfinite_steps: int = 10
    #: optimiser steps between host reads of the non-finite bookkeeping when the optimiser drops steps itself (fused
    #: Adam/AdamW, :meth:`skip_nonfinite_step`); None: every step on a CPU (a read costs nothing there), the trainer's
    #: ``log_every_n_steps`` on a GPU (each read waits for the GPU)
    nonfinite_check_every: Optional[int] = None
    _nonfinite_in_row: int = 0  # consecutive dropped steps (as of the last host read)
    _skipped_steps: int = 0  # dropped steps of this run (this process; as of the last host read)
    _loss_finite: Optional[torch.Tensor] = None  # this step's losses finite (a bool tensor: no host sync yet)
    # on the device, for optimisers that drop steps themselves: [steps dropped in a row, dropped steps, the step at
    # which max_nonfinite_steps in a row were reached or -1]; read on the host every nonfinite_check_every steps
    _nonfinite: Optional[torch.Tensor] = None
    _last_nonfinite_check: int = -1  # the optimiser step of the last host read

    # --- settings ------------------------------------------------------------------------------------------------
    def save_settings(self) -> None:
        """Called in a subclass's ``__init__`` after ``super().__init__()``: its arguments except ``RUNTIME`` go to
        ``hparams`` (and the checkpoint), the ``RUNTIME`` ones to validated attributes."""
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        if caller is None:
            raise RuntimeError("save_settings reads its caller's arguments from the call stack, which this Python "
                               "does not expose (inspect.currentframe() is None): run lift3d on CPython")
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
        if name == "max_nonfinite_steps" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"max_nonfinite_steps must be an integer >= 1 (NaN/inf steps in a row that stop a run), "
                             f"got {value!r}")
        return value

    #: the checkpoint key of the training data's input settings (see :meth:`on_save_checkpoint`)
    INPUT_SETTINGS_KEY: ClassVar[str] = "input_settings"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Records how the training data prepared the model's input (the datamodule's ``input_settings``, e.g.
        ``{"input_size": 64, "foreground_ratio": 0.0}``), so ``lift3d predict`` prepares images the same way."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        settings = getattr(datamodule, "input_settings", None)
        if settings:
            checkpoint[self.INPUT_SETTINGS_KEY] = dict(settings)

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

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Logs ``train/grad_norm`` (the total 2-norm of the gradients, before clipping) and clips, with one norm
        computation a step: Lightning's own clipping would compute the norm again inside ``clip_grad_norm_``. The
        clipping is ``clip_grad_norm_``'s (or ``clip_grad_value_``'s) to the value; it also lets a fused optimiser
        clip (Lightning's mixed-precision plugin refuses to, for the sake of fp16's gradient scaler, which
        :meth:`adam_implementation` never pairs with a fused one). DeepSpeed clips its own partitioned gradients."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or isinstance(self.trainer.precision_plugin, DeepSpeedPrecision):
            self.skip_nonfinite_step(optimizer, None)  # the loss only: DeepSpeed's gradients are its own
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        norm = total_grad_norm(grads)
        self.log("train/grad_norm", norm, batch_size=1)
        if self.skip_nonfinite_step(optimizer, norm) or not gradient_clip_val:
            return
        if gradient_clip_algorithm in (None, "norm"):
            # clip_grad_norm_ scales by min(1, clip / norm) always (no host sync on a GPU); on a CPU a norm under the
            # limit skips the scaling by exactly 1
            if norm.device.type != "cpu" or norm + 1e-6 > gradient_clip_val:
                torch.nn.utils.clip_grads_with_norm_(
                    [p for group in optimizer.param_groups for p in group["params"]], gradient_clip_val, norm)
        else:
            torch.nn.utils.clip_grad_value_([p for group in optimizer.param_groups for p in group["params"]],
                                            gradient_clip_val)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Notes whether the loss about to be back-propagated is finite (over accumulated batches: all of them)."""
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def skip_nonfinite_step(self, optimizer, grad_norm: Optional[torch.Tensor]) -> bool:
        """Before clipping and the optimiser step: drops the step when its loss or gradient norm (``grad_norm``,
        the one norm of :meth:`configure_gradient_clipping`) is NaN/inf on any rank; every DDP rank drops the same
        steps (the flag is reduced over the ranks). Each dropped step is counted (``train/skipped_steps``, logged
        every step) and warned about; ``max_nonfinite_steps`` in a row stop the run with
        :class:`NonFiniteTrainingError` naming the step. Returns whether the step is known here to be dropped (then
        clipping is skipped).

        Two ways to drop, the same outcome (no update, no weight decay, no moment update, the optimiser's step count
        unchanged):

        * fused Adam/AdamW (what :meth:`adam_implementation` picks on GPUs and CPUs): the flag goes to the optimiser
          as ``found_inf`` (the fused kernels' own skip, which fp16's gradient scaler uses), so the decision costs no
          host sync: the count, the warning and the stop are read on the host every ``nonfinite_check_every`` steps
          (:meth:`check_nonfinite_steps`; every step on a CPU). Once ``max_nonfinite_steps`` in a row are reached,
          every later step is dropped too until that read stops the run, so the weights the error names are the
          weights. Between reads it returns False (not known on the host): clipping a dropped step's gradients
          changes nothing.
        * other optimisers: the flag is read on the host (one sync a step) and every ``p.grad`` set to None: torch's
          optimisers leave a parameter without a gradient untouched.

        Under fp16's gradient scaler non-finite gradients are the scaler's (it skips the step and lowers its scale),
        so only the loss counts; under DeepSpeed (whose gradients are not ``p.grad``) a non-finite loss is counted and
        stops the run, but DeepSpeed applies the step."""
        loss_finite, self._loss_finite = self._loss_finite, None
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        if loss_finite is not None:
            bad |= ~loss_finite.to(bad.device)
        if grad_norm is not None and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            bad |= ~torch.isfinite(grad_norm).to(bad.device)
        opt = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps torch's
        if self._drops_in_optimizer(opt):
            self._drop_in_optimizer(opt, bad)
            every = self.nonfinite_check_every or (1 if self.device.type == "cpu" else
                                                   max(1, int(getattr(self.trainer, "log_every_n_steps", 1) or 1)))
            if (self.global_step + 1) % every == 0:
                try:
                    self.check_nonfinite_steps(self.global_step, loss_finite, grad_norm)
                except NonFiniteTrainingError:
                    del opt.found_inf  # the run stops here: no step reads it
                    raise
                return self._nonfinite_in_row > 0  # read at this step: dropped (clipping skipped) or not
            return False
        bad = self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
        self._nonfinite_in_row = self._nonfinite_in_row + 1 if bad else 0
        self._skipped_steps += int(bad)  # logged by optimizer_step (the loop's; a hand-driven engine step logs nothing)
        if not bad:
            return False
        step, n = self.global_step, self._nonfinite_in_row
        what = self._nonfinite_values(loss_finite, grad_norm)
        if n >= self.max_nonfinite_steps:
            raise self._nonfinite_error(step, n, what)
        log.warning("optimiser step %d skipped: NaN/inf loss or gradient norm (%s); %d in a row, the run stops at %d",
                    step, what, n, self.max_nonfinite_steps)
        if isinstance(self.trainer.precision_plugin, DeepSpeedPrecision):
            return False
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        return True

    def _drops_in_optimizer(self, opt) -> bool:
        """Whether ``opt`` drops a step itself when given ``found_inf`` (torch's fused Adam and AdamW read it)."""
        return (isinstance(opt, torch.optim.Adam) and bool(opt.defaults.get("fused"))
                and not isinstance(self.trainer.precision_plugin, DeepSpeedPrecision))

    def _drop_in_optimizer(self, opt, bad: torch.Tensor) -> None:
        """Device-side bookkeeping of this step's flag ``bad`` (no host sync) and ``opt.found_inf`` from it."""
        bad = self.trainer.strategy.reduce(bad.float(), reduce_op="sum") > 0  # any rank (identity on one device)
        state = self._nonfinite
        if state is None or state.device != bad.device:
            if state is None:  # this process's first step (a resumed run starts past 0)
                self._last_nonfinite_check = self.global_step - 1
            state = torch.tensor([float(self._nonfinite_in_row), float(self._skipped_steps), -1.0], device=bad.device)
        in_row = (state[0] + 1) * bad
        stop = torch.where((state[2] < 0) & (in_row >= self.max_nonfinite_steps), float(self.global_step), state[2])
        bad = bad | (stop >= 0)  # past the stop every step is dropped until the host reads it
        self._nonfinite = torch.stack([in_row, state[1] + bad, stop])
        param = next(p for group in opt.param_groups for p in group["params"])
        opt.found_inf = bad.to(param.device, torch.float32)  # a scalar, as the step counts; removed by optimizer_step

    def check_nonfinite_steps(self, step: int, loss_finite: Optional[torch.Tensor] = None,
                              grad_norm: Optional[torch.Tensor] = None) -> None:
        """Reads the device-side count of dropped steps up to optimiser step ``step`` (one host sync): warns about
        the steps dropped since the last read and raises :class:`NonFiniteTrainingError` once
        ``max_nonfinite_steps`` in a row were dropped. ``loss_finite``/``grad_norm``: step ``step``'s, named in the
        messages when that step is the one reported."""
        if self._nonfinite is None or step <= self._last_nonfinite_check:
            return
        in_row, skipped, stop = (int(v) for v in self._nonfinite.tolist())
        new, last = skipped - self._skipped_steps, self._last_nonfinite_check
        self._nonfinite_in_row, self._skipped_steps = in_row, skipped
        self._last_nonfinite_check = step
        one = new == 1 and in_row and last == step - 1 and (loss_finite is not None or grad_norm is not None)
        what = self._nonfinite_values(loss_finite, grad_norm) if one else None  # this step's values, when it's the one
        if stop >= 0:
            n = self.max_nonfinite_steps
            raise self._nonfinite_error(stop, n, what if stop == step else None)
        if one:
            log.warning("optimiser step %d skipped: NaN/inf loss or gradient norm (%s); %d in a row, the run stops "
                        "at %d", step, what, in_row, self.max_nonfinite_steps)
        elif new:
            log.warning("%d optimiser steps skipped among steps %d..%d: NaN/inf loss or gradient norm; %d in a row "
                        "now, the run stops at %d", new, last + 1, step, in_row, self.max_nonfinite_steps)

    @staticmethod
    def _nonfinite_values(loss_finite: Optional[torch.Tensor], grad_norm: Optional[torch.Tensor]) -> str:
        return (f"loss finite: {None if loss_finite is None else bool(loss_finite)}, gradient norm: "
                f"{None if grad_norm is None else float(grad_norm)} (on this rank)")

    def _nonfinite_error(self, step: int, n: int, what: Optional[str]) -> NonFiniteTrainingError:
        return NonFiniteTrainingError(
            f"training stopped at optimiser step {step}: {n} steps in a row (steps {step - n + 1}..{step}) had a "
            f"NaN/inf loss or gradient norm on some rank{f' ({what})' if what else ''} and were skipped. The weights "
            f"are those before step {step - n + 1}; look for bad samples or a diverging run (lower the learning "
            f"rate, check gradient_clip_val), or raise max_nonfinite_steps ({self.max_nonfinite_steps})")

    def adam_implementation(self) -> dict[str, bool]:
        """The keyword that picks torch's Adam/AdamW implementation: ``fused`` (one pass over each tensor, on a GPU
        and on a CPU, where it ran 2–3× faster than the per-tensor loop and ``foreach`` for lrm_small's shapes and for
        lrm_tiny's many small tensors alike: BENCHMARKS.md, peer benchmark; it also drops non-finite steps without a
        host sync, :meth:`skip_nonfinite_step`), except under fp16's gradient scaler (Lightning unscales before
        clipping only for unfused optimisers) and DeepSpeed (its optimiser wrapper), which keep ``foreach``."""
        plugin = self._trainer.precision_plugin if self._trainer is not None else None
        scaled = getattr(plugin, "scaler", None) is not None
        return {"foreach": True} if scaled or isinstance(plugin, DeepSpeedPrecision) else {"fused": True}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)

    def optimizer_step(self, epoch, batch_idx, optimizer, *args, **kwargs) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, *args, **kwargs)  # the closure: backward, clipping
        opt = getattr(optimizer, "_optimizer", optimizer)
        if hasattr(opt, "found_inf"):  # this step's drop flag (skip_nonfinite_step), read by the step just taken
            del opt.found_inf
        # the device-side count where the optimiser drops steps itself (no host sync), else the host's
        skipped = self._nonfinite[1] if self._nonfinite is not None else float(self._skipped_steps)
        self.log("train/skipped_steps", skipped, batch_size=1)

    def on_train_end(self) -> None:
        self.check_nonfinite_steps(self.global_step - 1)  # steps dropped since the last read: warned, or it fails

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
