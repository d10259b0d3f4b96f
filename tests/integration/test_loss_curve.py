"""The tiny runs' loss curves are the stored ones: lrm_tiny and one2345_tiny trained a few steps from seed 0 on one
torch thread, on the Blender renders of the session fixtures, give each step's training loss of
``tests/data/tiny_loss_curves.json`` to float noise (rtol 1e-5, atol 1e-6). A refactor must leave them unchanged.

A change that alters training on purpose (the renderer, a loss, an initialisation) regenerates the file with
``.venv/bin/python -m tests.loss_curve`` (this test in write mode; see tests/loss_curve.py) and says why in its commit.
"""

import pytest

from tests.loss_curve import STEPS, check_curve, lrm_curve, one2345_curve

pytestmark = pytest.mark.slow


def test_lrm_tiny_loss_curve_is_the_stored_curve(lrm_shards, tmp_path):
    losses = lrm_curve(lrm_shards["dir"], tmp_path)
    print(f"lrm_tiny: {len(losses)} steps, loss {losses[0]:.6f} → {losses[-1]:.6f}")
    assert len(losses) == STEPS["lrm_tiny"]
    check_curve("lrm_tiny", losses)


def test_one2345_tiny_loss_curve_is_the_stored_curve(one2345_shards, tmp_path):
    losses = one2345_curve(one2345_shards["dir"], tmp_path)
    print(f"one2345_tiny: {len(losses)} steps, loss {losses[0]:.6f} → {losses[-1]:.6f}")
    assert len(losses) == STEPS["one2345_tiny"]
    check_curve("one2345_tiny", losses)
