"""W&B for ``lift3d`` runs: offline without an API key, one run id per run directory, config and git logged.

* :func:`wandb_mode` — the one online/offline rule of every W&B run lift3d starts (``lift3d fit`` and
  ``lift3d evaluate``): ``WANDB_MODE`` when set, else online with an API key (``WANDB_API_KEY`` or a ``~/.netrc``
  entry for the W&B host, as ``wandb login`` writes it), else offline; an offline run ends by printing
  ``wandb sync <dir>``.
* :func:`run_id` — the run id lives in ``<default_root_dir>/wandb_run_id``: a run that resumes from a checkpoint
  (a requeued SLURM job, ``--ckpt_path auto``) reuses it, so W&B continues the same run (``resume="allow"``);
  a fresh run writes a new one.
* :class:`LoggedConfig` — the CLI's config callback: besides ``config.yaml`` in the log directory, W&B gets the
  resolved config, the git commit (and whether the tree was dirty), the launch plan and the SLURM job.
"""

from __future__ import annotations

import netrc
import os
import secrets
import string
import subprocess
from typing import Optional, Union
from urllib.parse import urlparse

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from configs import ROOT

RUN_ID_FILE = "wandb_run_id"
WANDB_LOGGERS = {"lightning.pytorch.loggers.WandbLogger", "lightning.pytorch.loggers.wandb.WandbLogger",
                 "pytorch_lightning.loggers.WandbLogger", "pytorch_lightning.loggers.wandb.WandbLogger",
                 "WandbLogger"}


def wandb_mode(env=None) -> tuple[str, Optional[str]]:
    """(mode, why offline) for a W&B run started here: ``WANDB_MODE`` when set (an explicit choice is kept, reason
    None); else ``("online", None)`` with an API key (``WANDB_API_KEY``, or a ``~/.netrc`` entry for the W&B host:
    ``NETRC`` and ``WANDB_BASE_URL`` are honoured); else ``("offline", reason)``."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"], None
    if env.get("WANDB_API_KEY"):
        return "online", None
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = env.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        if netrc.netrc(path).authenticators(host):
            return "online", None
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline", f"no W&B API key (WANDB_API_KEY is unset and {path} has no entry for {host})"


def run_id(run_dir: str, resuming: bool, write: bool) -> tuple[str, bool]:
    """(id, reused): the id recorded in ``run_dir`` when ``resuming`` and one is there, else a new one (recorded
    when ``write``: the process that will be rank 0)."""
    path = os.path.join(run_dir, RUN_ID_FILE)
    if resuming and os.path.isfile(path):
        with open(path) as f:
            recorded = f.read().strip()
        if recorded:
            return recorded, True
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id alphabet
    if write:
        os.makedirs(run_dir, exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(new + "\n")
        os.replace(tmp, path)
    return new, False


def git_state(root: Union[str, os.PathLike] = ROOT) -> dict:
    """{"commit", "dirty", "branch"} of the repository the code runs from ("unknown" outside a git checkout)."""
    def git(*args):
        r = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=20)
        if r.returncode:
            raise OSError(r.stderr.strip())
        return r.stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "branch": "unknown", "dirty": None}


def slurm_state(env=None) -> dict:
    env = os.environ if env is None else env
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME", "SLURM_JOB_NUM_NODES",
            "SLURM_NTASKS", "SLURM_TASKS_PER_NODE", "SLURM_RESTART_COUNT", "SLURM_JOB_PARTITION")
    return {k.lower().replace("slurm_", ""): env[k] for k in keys if k in env}


def wandb_loggers(trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def sync_hint(trainer) -> Optional[str]:
    """``wandb sync <dirs>`` for an offline W&B run of this trainer (rank 0), else None. A resumed run has one
    offline directory per start, all with the same id: all of them are listed, oldest first."""
    import glob

    for lg in wandb_loggers(trainer):
        run = lg._experiment  # only a run this process started; never start one here
        if run is None or not getattr(run, "offline", False):
            continue
        this = os.path.dirname(run.dir.rstrip(os.sep))
        dirs = sorted(glob.glob(os.path.join(os.path.dirname(this), f"offline-run-*-{run.id}"))) or [this]
        return "wandb sync " + " ".join(dirs)
    return None


class LoggedConfig(SaveConfigCallback):
    """``config.yaml`` in the log directory (overwritten: a resumed run does not fail on it) and, for W&B, the
    resolved config + git commit + launch plan + SLURM job in the run's config (rank 0 only)."""

    extra: dict = {}  # set by the CLI before fit: {"launch": plan, "resume_from": path}

    def save_config(self, trainer, pl_module, stage: str) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        resolved = self.parser.dump(self.config, skip_none=False, format="yaml")
        import yaml

        payload = {"config": yaml.safe_load(resolved), "git": git_state(), "slurm": slurm_state(),
                   **{k: v for k, v in self.extra.items() if v is not None}}
        for lg in loggers:
            lg.experiment.config.update({"lift3d": payload}, allow_val_change=True)
            lg.experiment.summary["git_commit"] = payload["git"]["commit"]
