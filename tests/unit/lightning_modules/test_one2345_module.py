"""One2345Module and the assembled One2345 network on synthetic batches (tiny sizes, CPU)."""

import math

import numpy as np
import pytest
import torch

from configs import MODEL_DIR, load_model_block
from geometry.cameras import intrinsics_from_fov, look_at, spherical_to_cartesian
from lightning_modules.losses import step_decay_with_warmup
from lightning_modules.networks.one2345.model import One2345
from lightning_modules.one2345 import One2345Module, plain, sample_pixels

TINY = load_model_block(MODEL_DIR / "one2345_tiny.yaml").init_args


@pytest.fixture(autouse=True)
def one_thread():
    """spconv's CPU kernels need one intra-op thread (networks/one2345/sparse_cnn.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_batch(views: int = 6, size: int = 32, seed: int = 0) -> dict:
    """A batch of one object: ``views`` source views on a ring, a target view, a centred square mask."""
    g = torch.Generator().manual_seed(seed)
    el, az = np.full(views + 1, 20.0), np.linspace(0.0, 360.0, views + 1, endpoint=False)
    c2w = torch.from_numpy(np.stack([look_at(p) for p in spherical_to_cartesian(np.full(views + 1, 2.8), el, az)]))
    K = torch.from_numpy(np.stack([intrinsics_from_fov(40.0, size, size)] * (views + 1)))
    mask = torch.zeros(1, 1, 1, size, size)
    mask[..., size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
    return {"key": ["obj"], "source_images": torch.rand(1, views, 3, size, size, generator=g),
            "source_c2w": c2w[None, :views].float(), "source_K": K[None, :views].float(),
            "target_images": torch.rand(1, 1, 3, size, size, generator=g), "target_masks": mask,
            "target_depths": mask * 2.5, "target_c2w": c2w[None, views:].float(), "target_K": K[None, views:].float(),
            "background": torch.ones(1, 3)}


def tiny_module(**overrides) -> One2345Module:
    torch.manual_seed(0)
    return One2345Module(**{**TINY, **overrides})


def test_sample_pixels_draws_the_stated_mixture():
    torch.manual_seed(0)
    mask = torch.zeros(1, 20, 20)
    mask[:, 5:15, 5:15] = 1.0  # a quarter of the pixels
    inside = mask.flatten(1)[0] > 0.5
    only_fg = sample_pixels(mask, 4000, 1.0)
    assert inside[only_fg[0]].all()
    mixed = sample_pixels(mask, 20000, 0.5)
    share = inside[mixed[0]].float().mean().item()
    assert share == pytest.approx(0.5 + 0.5 * 0.25, abs=0.02)  # the foreground half plus the uniform half's quarter
    empty = sample_pixels(torch.zeros(1, 20, 20), 4000, 1.0)  # no mask: uniform instead of a division by zero
    assert empty.min() >= 0 and empty.max() < 400 and len(empty[0].unique()) > 300


def test_step_decay_with_warmup():
    assert [step_decay_with_warmup(s, 4, 10, 0.5) for s in (0, 3, 4, 13, 14, 24)] == [0.25, 1.0, 1.0, 1.0, 0.5, 0.25]
    assert step_decay_with_warmup(10 ** 6, 0, 0, 0.5) == 1.0


class SphereSDF(torch.nn.Module):
    """An analytic field in SDFNetwork's place: |p| − r, and zero hidden features."""

    def __init__(self, radius: float, feature_dim: int):
        super().__init__()
        self.radius, self.feature_dim = radius, feature_dim

    def sdf_fn(self, volume, bound):
        def fn(points):
            return points.norm(dim=-1) - self.radius, points.new_zeros(*points.shape[:2], self.feature_dim)
        return fn


def test_mesh_is_the_level_zero_surface_of_the_sdf():
    """extract_mesh on an exact sphere SDF: vertices on |p| = r, faces wound outwards, colours in [0, 1]."""
    module = tiny_module().eval()
    module.net.sdf_net = SphereSDF(0.6, TINY["sdf"]["feature_dim"])
    with torch.no_grad():
        scene = module.encode(synthetic_batch())
    verts, faces, colours = module.extract_mesh(scene, resolution=48)
    radii = np.linalg.norm(verts, axis=1)
    assert np.abs(radii - 0.6).max() < 0.01
    assert colours.shape == verts.shape and colours.min() >= 0.0 and colours.max() <= 1.0
    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (np.sum(normals * tri.mean(axis=1), axis=1) > 0).all()


def test_untrained_sdf_is_negative_inside_positive_outside():
    """Geometric initialisation: before training the SDF approximates |p| − radius (closely only for wide layers),
    so it is negative at the centre and positive at the box's corners."""
    module = tiny_module().eval()
    with torch.no_grad():
        scene = module.encode(synthetic_batch())
        corners = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
        assert module.net.sdf(scene, torch.zeros(1, 3)).item() < 0
        assert (module.net.sdf(scene, corners) > 0).all()


def test_training_steps_reach_every_parameter():
    """All loss terms are computed and finite; from the second step on every parameter gets a gradient. (At step
    0 the sparse CNN gets none: geometric init zeroes the SDF MLP's geometry-feature weights, which the first step
    moves off zero — that is SAL/NeuS's init, not a broken path.)"""
    module = tiny_module(mask_start_step=0)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    batch = synthetic_batch()
    for step in range(2):
        opt.zero_grad()
        scene = module.encode(batch)
        rays = module.target_rays(batch, 64)
        assert rays["origins"].shape == (1, 64, 3) and rays["mask"].shape == (1, 64)
        out = module.net.render_rays(scene, rays["origins"], rays["dirs"], batch["background"], stratified=True)
        terms = module.losses(scene, rays, out)
        assert {"colour", "eikonal", "sparseness", "mask", "depth", "loss", "psnr"} <= set(terms)
        assert all(torch.isfinite(v) for v in terms.values())
        terms["loss"].backward()
        missing = {n.split(".")[0] for n, p in module.net.named_parameters()
                   if p.grad is None or not p.grad.abs().sum() > 0}
        assert missing == ({"geometry"} if step == 0 else set()), (step, missing)
        opt.step()


def test_mask_loss_waits_for_its_step():
    module = tiny_module(mask_start_step=10)
    batch = synthetic_batch()
    scene = module.encode(batch)
    rays = module.target_rays(batch, 16)
    out = module.net.render_rays(scene, rays["origins"], rays["dirs"], batch["background"])
    assert "mask" not in module.losses(scene, rays, out)  # global_step 0 < 10


def test_target_rays_gather_the_pixels_they_name():
    module = tiny_module()
    batch = synthetic_batch(size=16)
    everything = module.target_rays(batch, None)
    torch.manual_seed(3)
    some = module.target_rays(batch, 32)
    torch.manual_seed(3)
    idx = sample_pixels(batch["target_masks"][:, 0, 0], 32, module.hparams.foreground_fraction)
    for k in ("origins", "dirs", "rgb", "mask", "depth"):
        assert torch.equal(some[k], everything[k][:, idx[0]])


def test_whole_view_render_shapes_and_normals():
    module = tiny_module().eval()
    batch = synthetic_batch(size=16)
    with torch.no_grad():
        out, _ = module.render_target(batch)
    assert out["images"].shape == (1, 1, 3, 16, 16) and out["normals"].shape == (1, 1, 3, 16, 16)
    # the init ball (about r = 0.5) covers the image centre: opaque, with a normal facing the camera
    centre_normal = out["normals"][0, 0, :, 8, 8]
    to_camera = batch["target_c2w"][0, 0, :3, 3] / batch["target_c2w"][0, 0, :3, 3].norm()
    assert out["opacity"][0, 0, 0, 8, 8] > 0.9
    assert float(centre_normal @ to_camera) > 0.9
    assert float(out["opacity"][0, 0, 0, 0, 0]) < 0.1  # a corner ray misses it


def test_plain_clones_inference_tensors_only():
    with torch.inference_mode():
        made = torch.ones(2)
    normal = torch.zeros(2)
    out = plain({"a": made, "b": normal, "k": ["x"]})
    assert not out["a"].is_inference() and out["b"] is normal and out["k"] == ["x"]


def test_model_blocks_refuse_derived_options():
    with pytest.raises(TypeError, match="derives"):
        One2345(sdf={"geo_channels": 4})
    with pytest.raises(TypeError, match="'renderer'"):
        One2345(renderer={"samples": 3})


def test_paper_sizes():
    """The paper configuration builds on the meta device with the sizes DESIGN states."""
    paper = load_model_block(MODEL_DIR / "one2345_paper.yaml").init_args
    with torch.device("meta"):
        net = One2345(*(paper[k] for k in ("features", "cost_volume", "sparse_cnn", "sdf", "colour", "renderer")))
    assert net.features.out_channels == 56 and net.geometry.in_channels == 112
    assert net.cost_volume.resolution == 96 and net.colour_net.image_channels == 56
    assert math.isclose(net.bound, 1.0)


def test_visual_logger_writes_views_and_a_mesh(tmp_path):
    """VisualLogger over a real Trainer (no W&B logger: files under visuals/): the module's image grid (first source
    | rendered target | rendered normals | target | depth) and the mesh of the first object."""
    import lightning as L
    from PIL import Image

    from lightning_modules.callbacks import VisualLogger

    batch = synthetic_batch(size=16)
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[VisualLogger(every_n_steps=1, mesh_resolution=16)])
    trainer.fit(tiny_module(), loader)
    (views,) = (tmp_path / "visuals").glob("views-step*.png")
    assert Image.open(views).size == (16 * 5, 16)  # five 16² tiles in one row
    (mesh,) = (tmp_path / "visuals").glob("mesh-step*.glb")
    assert mesh.stat().st_size > 1000
