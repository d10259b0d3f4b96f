"""Fixed-seed loss curves of the tiny runs and the committed file they are compared against.

``tests/integration/test_loss_curve.py`` trains ``lrm_tiny`` and ``one2345_tiny`` for a few steps on the Blender
renders of the session fixtures (seed 0, one torch thread) and compares each step's training loss with
``tests/data/tiny_loss_curves.json``. The file is the truth a refactor must reproduce; a change that alters the
numbers on purpose (a new renderer, a new loss) regenerates it and says so in its commit::

    .venv/bin/python -m tests.loss_curve            # runs the test in write mode, prints the new curves

Regenerating renders the fixtures and trains both models, as the test does (a few minutes on a laptop CPU).
"""

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import lightning as L
import numpy as np
import torch

from configs import ROOT

CURVES = os.path.join(ROOT, "tests", "data", "tiny_loss_curves.json")
WRITE_ENV = "LIFT3D_WRITE_LOSS_CURVES"  # set to 1: the test writes its curve into CURVES instead of comparing
SEED = 0
THREADS = 1  # float reductions, so the losses, depend on torch's thread count
STEPS = {"lrm_tiny": 20, "one2345_tiny": 8}
RTOL, ATOL = 1e-5, 1e-6  # float noise only: a changed computation moves the loss far more


@contextmanager
def fixed_threads(n: int = THREADS):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lrm_curve(shards, run_dir) -> list[float]:
    """Training loss of each of ``STEPS['lrm_tiny']`` steps of lrm_tiny on ``shards`` (2 objects, batch 2, 4 views)."""
    from tests.integration.lrm_helpers import LossRecorder, datamodule, tiny_module, trainer

    with fixed_threads():
        L.seed_everything(SEED)
        rec = LossRecorder()
        trainer(run_dir, STEPS["lrm_tiny"], [rec], enable_checkpointing=False).fit(tiny_module(),
                                                                                  datamodule(shards))
    return rec.losses


def one2345_curve(shards, run_dir) -> list[float]:
    """Training loss of each of ``STEPS['one2345_tiny']`` steps of one2345_tiny on ``shards`` (rendered neighbours)."""
    from lightning_modules.one2345 import One2345Module
    from tests.integration.lrm_helpers import LossRecorder, trainer
    from tests.integration.test_one2345_training import TINY, datamodule

    with fixed_threads():
        L.seed_everything(SEED)
        rec = LossRecorder()
        trainer(run_dir, STEPS["one2345_tiny"], [rec], enable_checkpointing=False,
                limit_val_batches=0).fit(One2345Module(**TINY), datamodule(shards))
    return rec.losses


def _commit() -> str | None:
    proc = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def write_curve(name: str, losses: list[float]) -> None:
    """Stores one run's curve in CURVES (the other runs' entries are kept)."""
    curves = {}
    if os.path.exists(CURVES):
        with open(CURVES) as f:
            curves = json.load(f)
    curves[name] = {"loss": losses, "steps": len(losses), "seed": SEED, "torch_threads": THREADS,
                    "torch": torch.__version__, "commit": _commit(), "generated_by": "python -m tests.loss_curve"}
    os.makedirs(os.path.dirname(CURVES), exist_ok=True)
    with open(CURVES, "w") as f:
        json.dump(dict(sorted(curves.items())), f, indent=1)
        f.write("\n")


def check_curve(name: str, losses: list[float]) -> None:
    """Asserts that ``losses`` is the stored curve of ``name`` to float noise (or writes it, in write mode)."""
    if os.environ.get(WRITE_ENV) == "1":
        write_curve(name, losses)
        return
    if not os.path.exists(CURVES):
        raise AssertionError(f"no stored loss curves at {CURVES}: run `python -m tests.loss_curve` to write them")
    with open(CURVES) as f:
        stored = json.load(f).get(name)
    if stored is None:
        raise AssertionError(f"{CURVES} has no curve {name!r}: run `python -m tests.loss_curve` to add it")
    where = (f"{name}: the stored curve ({CURVES}) was made with torch {stored['torch']} on "
             f"{stored['torch_threads']} thread(s) at commit {stored['commit']}; this run: torch {torch.__version__}, "
             f"{THREADS} thread(s). If the change is meant to alter training, regenerate it with "
             "`python -m tests.loss_curve` and say so in the commit")
    assert len(losses) == len(stored["loss"]), f"{len(losses)} steps vs {len(stored['loss'])} stored. {where}"
    np.testing.assert_allclose(losses, stored["loss"], rtol=RTOL, atol=ATOL, err_msg=where)


def main() -> int:
    test = os.path.join(ROOT, "tests", "integration", "test_loss_curve.py")
    env = dict(os.environ, **{WRITE_ENV: "1"})
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                        env=env).returncode
    if rc == 0:
        with open(CURVES) as f:
            for name, curve in json.load(f).items():
                print(f"{name}: {curve['steps']} steps, loss {curve['loss'][0]:.6f} → {curve['loss'][-1]:.6f}")
        print(f"wrote {CURVES}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
