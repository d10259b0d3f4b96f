"""Real Blender renders shared by the integration tests (rendered once per session)."""

import os
import subprocess
import sys

import pytest

from configs import RENDER_DIR, ROOT
from render_farm import synthetic as assets

# Hang guards for the tests that use a costly session fixture (the rule: tests/README.md). pytest-timeout counts a
# fixture's setup in the test that runs first, so every test that uses the fixture gets 4× (its idle setup time + the
# slowest test body that uses it); a higher marker on the test stays. Idle times: the 2-core CI machine.
FIXTURE_TIMEOUT_S = {
    # lrm_shards ~5 s + 400 steps of lrm_tiny ~240 s (BENCHMARKS.md, "LRM overfitting run") + test_evaluate's
    # trained_run (eval_shards ~10 s, one `lift3d evaluate` ~60 s): ~320 s idle
    "overfit_lrm": 1300,
}


def pytest_collection_modifyitems(config, items):
    default = float(config.getini("timeout") or 0)
    for item in items:
        need = max((FIXTURE_TIMEOUT_S[f] for f in item.fixturenames if f in FIXTURE_TIMEOUT_S), default=0)
        marker = item.get_closest_marker("timeout")
        current = float(marker.kwargs.get("timeout", marker.args[0] if marker.args else 0)) if marker else default
        if need > current:
            item.add_marker(pytest.mark.timeout(need), append=False)  # before a module's pytestmark


def render_cli(*args, check=True, **kw):
    """Runs ``lift3d-render`` exactly as a user would (a fresh process)."""
    cmd = [sys.executable, "-m", "render_farm.cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    """Every generated asset (valid and broken) rendered by Blender at 96², 8 views of the lrm32 rig."""
    root = tmp_path_factory.mktemp("rendered")
    generated = assets.all_assets(str(root / "assets"))
    out = root / "shards"
    proc = render_cli("objaverse", "--glb-dir", root / "assets", "--out", out, "--config", "configs/render/tiny.yaml",
                      "--resolution", 96, "--samples", 8, "--num-workers", 2, "--no-progress")
    return {"assets": {a.uid: a for a in generated}, "out": out, "stdout": proc.stdout}


@pytest.fixture(scope="session")
def overfit_lrm(lrm_shards, tmp_path_factory):
    """lrm_tiny trained 400 steps on ``lrm_shards`` (seed 0): the module, its losses, each object's (PSNR, IoU)
    before training, and the trained run's checkpoint (``ckpt``) and an untrained one (``ckpt_untrained``)."""
    import lightning as L

    from tests.integration.lrm_helpers import (
        OVERFIT_STEPS,
        LossRecorder,
        all_views,
        datamodule,
        tiny_module,
        trainer,
        view_metrics,
    )

    L.seed_everything(0)
    module = tiny_module()
    root = tmp_path_factory.mktemp("overfit")
    before = {uid: view_metrics(module.eval(), all_views(lrm_shards["dir"], uid)) for uid in lrm_shards["assets"]}
    untrained = trainer(root / "untrained", 0, enable_checkpointing=False)
    untrained.fit(module, datamodule(lrm_shards["dir"]))
    untrained.save_checkpoint(root / "untrained.ckpt")
    rec = LossRecorder()
    run = trainer(root, OVERFIT_STEPS, [rec], enable_checkpointing=False)
    run.fit(module.train(), datamodule(lrm_shards["dir"]))
    run.save_checkpoint(root / "trained.ckpt")
    return {"module": module.eval(), "losses": rec.losses, "before": before, "ckpt": str(root / "trained.ckpt"),
            "ckpt_untrained": str(root / "untrained.ckpt")}


@pytest.fixture(scope="session")
def eval_shards(tmp_path_factory):
    """Held-out objects for evaluation: a generated sphere (named ``held_out_sphere``) and the multi-material
    box + cylinder, rendered by Blender with the ``eval24`` rig at 64² (24 views), plus a shard holding one corrupt
    sample (``corrupt_object``: its cameras.npz is garbage). ``glob`` matches every shard."""
    import io
    import tarfile

    from render_farm.config import load_render_config
    from render_farm.farm import render_task
    from render_farm.sources import LocalDirSource

    root = tmp_path_factory.mktemp("eval_shards")
    (root / "assets").mkdir()
    made = [assets.vertex_coloured_sphere(str(root / "assets"), name="held_out_sphere"),
            assets.multi_material(str(root / "assets"))]
    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=64, samples=8, rig="eval24",
                             rig_options={}, shard_maxcount=8)
    summary = render_task(LocalDirSource(str(root / "assets")), str(root / "shards"), cfg, num_workers=2,
                          progress=False)
    assert not summary.failures, summary.failures
    (shard,) = sorted((root / "shards").glob("*.tar"))
    with tarfile.open(shard) as src, tarfile.open(root / "shards" / "zz-corrupt.tar", "w") as dst:
        for member in src.getmembers():
            key, suffix = member.name.split(".", 1)
            if key != made[0].uid:
                continue
            data = b"not an npz" if suffix == "cameras.npz" else src.extractfile(member).read()
            info = tarfile.TarInfo(f"corrupt_object.{suffix}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return {"dir": root / "shards", "glob": str(root / "shards" / "*.tar"), "assets_dir": root / "assets",
            "assets": {a.uid: a for a in made}}


@pytest.fixture(scope="session")
def one2345_shards(tmp_path_factory):
    """The multi-material box + cylinder rendered by Blender with the ``one2345`` rig at 64², 8 spp: 8 ``gt`` views
    and 4 ``gt_neighbor`` views (±10°) of each, 40 views in one shard (``dir``; ``asset``: the generated asset)."""
    from render_farm.config import load_render_config
    from render_farm.farm import render_task
    from render_farm.sources import LocalDirSource

    root = tmp_path_factory.mktemp("one2345_shards")
    (root / "assets").mkdir()
    made = assets.multi_material(str(root / "assets"))
    cfg = load_render_config(os.path.join(RENDER_DIR, "one2345.yaml"), resolution=64, samples=8,
                             shard_maxcount=8)
    summary = render_task(LocalDirSource(str(root / "assets")), str(root / "shards"), cfg, num_workers=2,
                          progress=False)
    assert not summary.failures, summary.failures
    return {"dir": root / "shards", "asset": made, "assets_dir": root / "assets"}


@pytest.fixture(scope="session")
def zero123_shards(one2345_shards, tmp_path_factory):
    """``one2345_shards`` through ``lift3d-render zero123`` (a fresh process) with a tiny random Zero123 checkpoint
    laid out like a real one (``weights``), 2 DDIM steps: ``dir`` holds the 72-view shards, ``input`` the render."""
    from tests.weights import save_tiny_zero123

    root = tmp_path_factory.mktemp("zero123_shards")
    weights = save_tiny_zero123(root / "tiny-zero123")
    out = root / "shards"
    proc = render_cli("zero123", "--shards", one2345_shards["dir"], "--weights", weights, "--out", out,
                      "--steps", 2, "--device", "cpu", "--no-progress", env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return {"dir": out, "weights": weights, "input": one2345_shards["dir"], "stdout": proc.stdout}
