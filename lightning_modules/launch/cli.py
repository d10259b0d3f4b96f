"""``lift3d``: the LightningCLI entry point (fit / validate / test / predict) plus two commands of its own.

    lift3d fit --config configs/experiments/lrm_paper.yaml [--ckpt_path auto]
    lift3d evaluate --ckpt last.ckpt --shards data/shards/eval24     (lightning_modules.evaluation.cli)
    lift3d convert-checkpoint ZERO_DIR model.ckpt                    (lightning_modules.launch.deepspeed)

Models and data are chosen by ``class_path`` in the YAML (``model:`` and ``data:`` blocks); every config in
configs/ is parsed by a test. On top of Lightning's CLI (:class:`Lift3dCLI`):

* a run directory: with ``trainer.default_root_dir`` set, ModelCheckpoints without a ``dirpath`` write to
  ``<default_root_dir>/checkpoints`` and a WandbLogger without a ``save_dir`` logs there, so one setting (what
  ``slurm/train_*.sh`` passes) places a whole run;
* ``--ckpt_path auto`` resumes from the checkpoint of that directory that is furthest along, or starts fresh when
  there is none (what the SLURM scripts pass, so a requeued job continues); checkpoints that all fail to read stop
  it instead of being overwritten; ``last.ckpt`` is written at the step a fit ends on;
* checkpoints load as tensors only (:mod:`lightning_modules.launch.checkpoints`): an explicit ``--ckpt_path`` is
  checked before anything is built and Lightning loads with ``weights_only=True``;
* a launch check before anything is built (:func:`lightning_modules.launch.cluster.check_launch`): the SLURM allocation
  against ``trainer.num_nodes`` × ``devices``, and the global batch against ``global_batch_size``;
  ``LIFT3D_PREFLIGHT=1`` runs only the check and prints the plan (the SLURM scripts do this once before ``srun``);
* W&B (:mod:`lightning_modules.launch.tracking`): offline without an API key (the sync command printed at the end),
  one run id per run directory (a resumed run continues its W&B run), the resolved config and git commit logged;
  ``WANDB_PROJECT`` (site setting) overrides the config's project;
* inside a SLURM job: SIGUSR1 is caught from the first moment; a :class:`~lightning_modules.launch.cluster.Preemption`
  callback (added when the config has none) checkpoints at the next step and, after a clean shutdown, rank 0
  requeues the job; progress lines replace the progress bar in the job log;
* ``predict`` with ``ImageDataModule``: images are prepared as the checkpoint's training inputs were (its recorded
  ``input_settings``: size, framing, background) unless the command line says otherwise (a warning when it differs),
  and no W&B run is opened (the configs' WandbLogger is dropped) unless ``--trainer.logger`` is given;
* ``lift3d --help`` lists ``evaluate`` and ``convert-checkpoint`` with the Trainer's subcommands.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("SLURM_JOB_ID"):  # before the heavy imports: a pre-emption signal now must not kill us
    from lightning_modules.launch.signals import install_signal_flag

    install_signal_flag()

from typing import Optional  # noqa: E402

import torch  # noqa: E402
from lightning.pytorch import Callback, LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lightning_modules.launch import checkpoints, cluster, tracking  # noqa: E402

MODEL_CHECKPOINTS = {"lightning.pytorch.callbacks.ModelCheckpoint",
                     "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint", "ModelCheckpoint"}


def _say(message: str) -> None:
    if cluster.is_rank_zero_process():
        print(f"lift3d: {message}", flush=True)


def _as_list(value) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Lift3dCLI(LightningCLI):
    """LightningCLI with lift3d's run directory, ``--ckpt_path auto``, launch check and W&B handling."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        self.raw_args = [str(a) for a in (sys.argv[1:] if args is None else args if isinstance(args, list) else [])]
        self.launch_plan: Optional[dict] = None
        self.resume_from: Optional[str] = None
        kwargs.setdefault("save_config_callback", tracking.LoggedConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites its config.yaml
        super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=args, run=run, **kwargs)

    # lift3d's own commands (dispatched by :func:`main` before LightningCLI runs): listed in ``lift3d --help``
    OWN_COMMANDS = {
        "evaluate": "Score a checkpoint on held-out shards (metrics.jsonl, report.html); lift3d evaluate --help",
        "convert-checkpoint": "Consolidate a DeepSpeed ZeRO checkpoint directory into one Lightning checkpoint; "
                              "lift3d convert-checkpoint --help",
    }

    def _add_subcommands(self, parser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        from jsonargparse import ArgumentParser

        for name, description in self.OWN_COMMANDS.items():
            parser._subcommands_action.add_subcommand(name, ArgumentParser(description=description), help=description)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--global_batch_size", type=Optional[int], default=None,
                            help="the run's global batch; checked at start-up against data.init_args.batch_size × "
                                 "trainer.devices × num_nodes × accumulate_grad_batches")

    # ------------------------------------------------------------------------------------------ before building
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self._check_checkpoint_reads()

    # what Lightning resolves itself, and remote paths: read by Lightning, with weights_only=True (below)
    LIGHTNING_CKPT_WORDS = ("auto", "last", "hpc", "registry")

    def _check_checkpoint_reads(self) -> None:
        """Checkpoints load as tensors only (issue 14): an explicit ``--ckpt_path`` is read that way here, before
        Lightning parses its hyper-parameters (an error naming the file, exit 2, instead of an unpickling traceback),
        and Lightning's own load gets ``weights_only=True``."""
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else None
        if cfg is None:
            return
        if "weights_only" in cfg:
            if cfg.weights_only is False:
                print("lift3d: --weights_only=false: lift3d loads checkpoints as tensors only (a pickle can run code); "
                      "drop the option", file=sys.stderr, flush=True)
                sys.exit(2)
            cfg.weights_only = True
        ckpt = cfg.get("ckpt_path")
        if ckpt and str(ckpt) not in self.LIGHTNING_CKPT_WORDS and "://" not in str(ckpt):
            try:
                checkpoints.check_checkpoint(str(ckpt))
            except checkpoints.CheckpointError as exc:
                print(f"lift3d: --ckpt_path: {exc}", file=sys.stderr, flush=True)
                sys.exit(2)

    def _parse_ckpt_path(self) -> None:
        """Lightning's re-application of a checkpoint's hyper-parameters over the config (``--ckpt_path``), for
        checkpoints written outside LightningCLI too (a Trainer over a module built in code): their hparams carry no
        ``_class_path``, and Lightning hands them to jsonargparse as a bare dict, which it reads as arguments of the
        base class (LightningModule) and refuses once a model block is nested. They get the configured model's class
        path, as the hparams of LightningCLI's own checkpoints carry it."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or not os.path.isfile(ckpt_path):
            return
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        model = self.config[sub].get("model")
        if not hparams or ("_class_path" not in hparams and not (model and model.get("class_path"))):
            return
        class_path = hparams.pop("_class_path", None) or model.class_path
        try:
            self.config = self.parser.parse_object(
                {sub: {"model": {"class_path": class_path, "dict_kwargs": hparams}}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self._fill_run_dir(cfg.trainer)
        ckpt = cfg.get("ckpt_path")
        if self.subcommand == "fit":
            try:
                self.launch_plan = cluster.check_launch(
                    cfg.trainer.num_nodes, cfg.trainer.devices, self._batch_size(cfg),
                    cfg.trainer.accumulate_grad_batches or 1, cfg.get("global_batch_size"))
            except cluster.LaunchError as exc:
                print(f"lift3d: {exc}", file=sys.stderr, flush=True)
                sys.exit(2)
            if ckpt == "auto":
                cfg.ckpt_path = ckpt = self._auto_resume(cfg.trainer)
            self.resume_from = ckpt
            if os.environ.get("LIFT3D_PREFLIGHT"):  # the check only: nothing is built or written
                print(f"lift3d: preflight ok: {cluster.describe(self.launch_plan)}; "
                      f"{'resume from ' + ckpt if ckpt else 'fresh start'}; run directory "
                      f"{cfg.trainer.default_root_dir or os.getcwd()}", flush=True)
                sys.exit(0)
            self._prepare_wandb(cfg.trainer, resuming=bool(ckpt))
        elif ckpt == "auto":
            cfg.ckpt_path = self._auto_resume(cfg.trainer)
        zero_dir = ckpt and ckpt != "auto" and os.path.isdir(str(ckpt))
        if zero_dir and "deepspeed" not in str(cfg.trainer.strategy).lower():
            print(f"lift3d: {ckpt} is a directory: a DeepSpeed ZeRO checkpoint (one shard per rank) loads only under "
                  f"the DeepSpeed strategy; for anything else convert it first:\n  lift3d convert-checkpoint {ckpt} "
                  f"{str(ckpt).rstrip('/').removesuffix('.ckpt')}-fp32.ckpt", file=sys.stderr, flush=True)
            sys.exit(2)
        if self.subcommand == "predict":
            self._predict_settings(cfg)

    def _on_command_line(self, key: str) -> bool:
        """Whether the command line sets ``key`` (``--data.input_size``, ``--trainer.logger=...``, ``.init_args.``
        spelling too)."""
        block, _, name = key.partition(".")
        spellings = (f"--{block}.{name}", f"--{block}.init_args.{name}")
        return any(a == s or a.startswith(s + "=") for a in self.raw_args for s in spellings)

    def _predict_settings(self, cfg) -> None:
        """``lift3d predict``: images are prepared as the checkpoint's training data prepared its input views (its
        recorded ``input_settings``), unless the command line says otherwise (then a warning when they differ); and
        no experiment tracking (the experiment configs' WandbLogger would open a W&B run) unless asked for."""
        if not self._on_command_line("trainer.logger"):
            kept = [lg for lg in _as_list(cfg.trainer.logger)
                    if not (hasattr(lg, "get") and lg.get("class_path") in tracking.WANDB_LOGGERS)]
            cfg.trainer.logger = kept or False
        data = cfg.get("data")
        ckpt = cfg.get("ckpt_path")
        if data is None or not str(data.get("class_path", "")).endswith("ImageDataModule") or not ckpt \
                or not os.path.isfile(str(ckpt)):
            return
        import inspect

        from datamodules.images import ImageDataModule
        from lightning_modules.base import ReconstructionModule

        trained = torch.load(str(ckpt), weights_only=True, map_location="cpu", mmap=True).get(
            ReconstructionModule.INPUT_SETTINGS_KEY) or {}
        defaults = inspect.signature(ImageDataModule.__init__).parameters
        taken = {}
        for name, value in trained.items():
            if name not in data.init_args or name not in defaults:
                continue
            # told otherwise: on the command line, or a value other than the default (a data YAML)
            if not self._on_command_line(f"data.{name}") and data.init_args[name] == defaults[name].default:
                data.init_args[name] = taken[name] = value
            elif data.init_args[name] != value:
                print(f"lift3d: warning: --data.{name}={data.init_args[name]} while {ckpt} was trained on inputs "
                      f"with {name}={value}; predictions may suffer (drop the option to use the checkpoint's)",
                      file=sys.stderr, flush=True)
        if taken:
            _say("images prepared as the checkpoint's training inputs: "
                 + ", ".join(f"{k}={v}" for k, v in taken.items()))

    @staticmethod
    def _batch_size(cfg) -> Optional[int]:
        data = cfg.get("data")
        args = data.get("init_args") if data is not None and hasattr(data, "get") else None
        return args.get("batch_size") if args is not None and hasattr(args, "get") else None

    @staticmethod
    def _fill_run_dir(trainer) -> None:
        root = trainer.default_root_dir
        if not root:
            return
        for cb in _as_list(trainer.callbacks):
            if cb.get("class_path") in MODEL_CHECKPOINTS and cb.get("init_args") is not None \
                    and not cb.init_args.get("dirpath"):
                cb.init_args.dirpath = os.path.join(str(root), "checkpoints")
        for lg in _as_list(trainer.logger):
            if hasattr(lg, "get") and lg.get("class_path") in tracking.WANDB_LOGGERS and lg.get("init_args") \
                    is not None and lg.init_args.get("save_dir") in (None, "", "."):  # "." is the default
                lg.init_args.save_dir = str(root)

    @staticmethod
    def _auto_resume(trainer) -> Optional[str]:
        root = str(trainer.default_root_dir or os.getcwd())
        dirs = [cb.init_args.dirpath for cb in _as_list(trainer.callbacks)
                if cb.get("class_path") in MODEL_CHECKPOINTS and cb.get("init_args") is not None
                and cb.init_args.get("dirpath")]
        try:
            found = cluster.find_resume_checkpoint(root, [str(d) for d in dirs], report=_say)
        except cluster.ResumeError as exc:
            print(f"lift3d: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        _say(f"--ckpt_path auto: resuming from {found}" if found else
             f"--ckpt_path auto: no checkpoint in {root} yet, starting fresh")
        return found

    def _prepare_wandb(self, trainer, resuming: bool) -> None:
        wandb_cfgs = [lg for lg in _as_list(trainer.logger)
                      if hasattr(lg, "get") and lg.get("class_path") in tracking.WANDB_LOGGERS]
        if not wandb_cfgs:
            return
        _, reason = tracking.wandb_mode()
        if reason:
            os.environ["WANDB_MODE"] = "offline"
            _say(f"W&B runs offline: {reason}; the sync command is printed at the end")
        for lg in wandb_cfgs:
            init = lg.init_args
            if os.environ.get("WANDB_PROJECT"):
                init.project = os.environ["WANDB_PROJECT"]
            if init.get("id") or init.get("version"):
                continue
            run_dir = str(trainer.default_root_dir or init.get("save_dir") or os.getcwd())
            init.id, reused = tracking.run_id(run_dir, resuming, write=cluster.is_rank_zero_process())
            init.resume = "allow"  # the CLI's namespace carries wandb.init's resume=None, which would drop it
            _say(f"W&B run {init.id} ({'continued' if reused else 'new'}; id kept in "
                 f"{os.path.join(run_dir, tracking.RUN_ID_FILE)})")

    def _callbacks(self) -> list[Callback]:
        """The Trainer's callback list, to read or extend in place."""
        return self.trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's CallbackConnector, undeclared

    # ------------------------------------------------------------------------------------------ fit
    def before_fit(self) -> None:
        callbacks = self._callbacks()
        if not any(isinstance(cb, checkpoints.LastCheckpointOnFitEnd) for cb in callbacks):
            callbacks.append(checkpoints.LastCheckpointOnFitEnd())  # last.ckpt at the step the fit ends on
        if cluster.slurm_detected():
            from lightning_modules.callbacks import ProgressPrinter

            if not any(isinstance(cb, cluster.Preemption) for cb in callbacks):
                callbacks.append(cluster.Preemption())
            if not any(isinstance(cb, ProgressPrinter) for cb in callbacks):
                callbacks.append(ProgressPrinter())
        tracking.LoggedConfig.extra = {"launch": self.launch_plan, "resume_from": self.resume_from}

    def after_fit(self) -> None:
        preempted = [cb for cb in self._callbacks() if isinstance(cb, cluster.Preemption) and cb.preempted]
        if not self.trainer.is_global_zero:
            return
        hint = tracking.sync_hint(self.trainer)
        if preempted:
            for lg in tracking.wandb_loggers(self.trainer):
                if lg._experiment is not None:
                    lg._experiment.finish()  # flush before the requeue's SIGTERM arrives
        if hint:
            print(f"lift3d: W&B ran offline; upload the run with:\n  {hint}", flush=True)
        if preempted and preempted[0].requeue:
            cluster.requeue()

    # ------------------------------------------------------------------------------------------ predict
    def before_predict(self) -> None:
        """The files come from a PredictionWriter (the model's ``predict_dir`` unless the config names one); the
        writer has them, so the Trainer does not also keep every batch's meshes in memory."""
        from lightning_modules.prediction import PredictionWriter, check_output_dir

        if not any(isinstance(cb, PredictionWriter) for cb in self._callbacks()):
            self._callbacks().append(PredictionWriter())
        for cb in self._callbacks():  # before any inference: a directory that cannot be written stops here
            if isinstance(cb, PredictionWriter):
                try:
                    check_output_dir(cb.output_dir or self.model.predict_dir)
                except OSError as exc:
                    print(f"lift3d: {exc}", file=sys.stderr, flush=True)
                    sys.exit(2)
        if self.config_init[self.subcommand].get("return_predictions") is None:
            self.config_init[self.subcommand]["return_predictions"] = False


def quiet_third_party_deprecations() -> None:
    """Deprecation notices of the libraries under lift3d, which a user cannot act on: jsonargparse's about how
    Lightning's CLI calls it, torchvision's about how lpips builds VGG-16, torch's about Lightning's pytree use. The
    command line only (tests see every warning); warnings about lift3d's own choices are fixed where they arise."""
    import warnings

    from jsonargparse._deprecated import JsonargparseDeprecationWarning

    warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)
    warnings.filterwarnings("ignore", message=r"(The parameter 'pretrained' is deprecated|Arguments other than a "
                            r"weight enum or `None` for 'weights' are deprecated)", module=r"torchvision\.")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")


def main(args=None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if args is None:  # the `lift3d` command (tests call main with args and see every warning)
        quiet_third_party_deprecations()
    if argv and argv[0] == "evaluate":  # not a Trainer method: its own command, over Lightning Fabric
        from lightning_modules.evaluation.cli import main as evaluate

        evaluate(argv[1:])
        return
    if argv and argv[0] == "convert-checkpoint":  # DeepSpeed ZeRO shards -> one Lightning checkpoint
        from lightning_modules.launch.deepspeed import convert_main

        convert_main(argv[1:])
        return
    Lift3dCLI(args=args)


if __name__ == "__main__":
    main()
