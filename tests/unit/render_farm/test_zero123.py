"""Zero123 prediction pass: relative cameras, the pipeline on a tiny random checkpoint, and the pass on
hand-made one2345 samples (the real Blender-rendered path is in tests/integration/test_zero123.py)."""

import io
import json
import math
import os
import tarfile

import numpy as np
import pytest
import torch

from geometry.cameras import look_at, spherical_to_cartesian, zero123_relative_camera
from geometry.rigs import one2345
from lightning_modules.networks.zero123 import CCProjection, WeightsError, Zero123Pipeline, zero123_condition
from render_farm.shards import encode_sample
from render_farm.zero123 import PassSettings, predict_task, view_seed
from tests.weights import save_tiny_zero123


def cam(elevation, azimuth, radius=2.5):
    return look_at(spherical_to_cartesian(radius, elevation, azimuth))


# ------------------------------------------------------------------------------------------- relative camera
def test_target_higher_gives_negative_polar_delta():
    d_theta, d_phi, d_r = zero123_relative_camera(cam(20.0, 30.0), cam(30.0, 30.0))
    assert d_theta == pytest.approx(math.radians(-10.0))
    assert d_phi == pytest.approx(0.0, abs=1e-9) and d_r == pytest.approx(0.0, abs=1e-9)


def test_azimuth_follows_atan2_and_wraps_into_0_2pi():
    assert zero123_relative_camera(cam(10.0, 30.0), cam(10.0, 40.0))[1] == pytest.approx(math.radians(10.0))
    assert zero123_relative_camera(cam(10.0, 355.0), cam(10.0, 5.0))[1] == pytest.approx(math.radians(10.0))
    assert zero123_relative_camera(cam(10.0, 5.0), cam(10.0, 355.0))[1] == pytest.approx(math.radians(350.0))
    # atan2(y, x) of the centre itself: +Y is 90° counter-clockwise of +X
    assert zero123_relative_camera(look_at((2.0, 0, 0)), look_at((0, 2.0, 0)))[1] == pytest.approx(math.pi / 2)


def test_radius_delta_and_only_camera_centres_matter():
    d_theta, d_phi, d_r = zero123_relative_camera(cam(0.0, 0.0, 2.0), cam(0.0, 0.0, 2.5))
    assert d_r == pytest.approx(0.5) and d_theta == pytest.approx(0.0, abs=1e-9)
    turned = cam(0.0, 0.0, 2.5).copy()
    turned[:3, :3] = turned[:3, :3] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])  # roll the camera
    assert np.allclose(zero123_relative_camera(cam(0.0, 0.0, 2.0), turned), (d_theta, d_phi, d_r))


def test_relative_camera_is_batched():
    cond = np.stack([cam(0.0, 0.0), cam(20.0, 90.0)])
    target = np.stack([cam(10.0, 10.0), cam(10.0, 80.0)])
    d_theta, d_phi, d_r = zero123_relative_camera(cond, target)
    assert d_theta.shape == d_phi.shape == d_r.shape == (2,)
    assert np.allclose(np.degrees(d_theta), [-10.0, 10.0]) and np.allclose(np.degrees(d_phi), [10.0, 350.0])
    row = zero123_condition(d_theta, d_phi, d_r)
    assert row.shape == (2, 4) and np.allclose(row[0], [d_theta[0], math.sin(d_phi[0]), math.cos(d_phi[0]), 0],
                                               atol=1e-6)


# ------------------------------------------------------------------------------------------------ the pipeline
def test_cc_projection_matches_the_checkpoint_layout(tmp_path):
    proj = CCProjection()
    assert set(proj.state_dict()) == {"projection.weight", "projection.bias"}
    assert proj.projection.weight.shape == (768, 772)
    CCProjection(in_channel=36, out_channel=32).save_pretrained(tmp_path)
    assert json.load(open(tmp_path / "config.json"))["in_channel"] == 36
    assert CCProjection.from_pretrained(tmp_path).projection.weight.shape == (32, 36)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_zero123(tmp_path_factory.mktemp("zero123") / "tiny-zero123")


@pytest.fixture(scope="module")
def pipe(weights):
    return Zero123Pipeline.from_pretrained(weights, device="cpu")


def inputs(n, size=64):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    cams = np.stack([rng.uniform(-0.5, 0.5, n), rng.uniform(0, 2 * np.pi, n), np.zeros(n)], axis=-1)
    return images, cams


def test_tiny_checkpoint_has_the_real_layout(weights):
    for sub in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler", "cc_projection"):
        assert os.path.isdir(os.path.join(weights, sub)), sub
    index = json.load(open(os.path.join(weights, "model_index.json")))
    assert index["cc_projection"] == ["pipeline_zero1to3", "CCProjection"]  # a community module: not loadable whole


def test_image_size_comes_from_unet_and_vae(pipe):
    assert pipe.image_size == pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.unet.config.in_channels == 8


def test_deterministic_per_seed(pipe):
    images, cams = inputs(2)
    a = pipe(images, cams, [1, 2], num_inference_steps=2)
    b = pipe(images, cams, [1, 2], num_inference_steps=2)
    c = pipe(images, cams, [1, 3], num_inference_steps=2)
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b)
    assert np.array_equal(a[0], c[0]) and not np.allclose(a[1], c[1])  # each pair has its own generator


def test_batching_does_not_change_results(pipe):
    images, cams = inputs(5)
    seeds = [view_seed(0, "obj", v) for v in range(5)]
    together = pipe(images, cams, seeds, num_inference_steps=2, batch_size=8)
    alone = pipe(images, cams, seeds, num_inference_steps=2, batch_size=1)
    threes = pipe(images, cams, seeds, num_inference_steps=2, batch_size=3)
    assert np.allclose(together, alone, atol=1e-4) and np.allclose(together, threes, atol=1e-4)


def test_uint8_and_float_inputs_agree(pipe):
    images, cams = inputs(1)
    as_u8 = (images * 255).round().astype(np.uint8)
    assert np.allclose(pipe(as_u8, cams, [0], num_inference_steps=1),
                       pipe(as_u8.astype(np.float32) / 255, cams, [0], num_inference_steps=1), atol=1e-6)


def unet_calls(pipe, **kw):
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].clone(), kwargs["encoder_hidden_states"].clone()))

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        images, cams = inputs(3)
        pipe(images, cams, [0, 1, 2], **kw)
    finally:
        handle.remove()
    return calls


def test_guidance_one_runs_the_conditional_branch_only(pipe):
    calls = unet_calls(pipe, num_inference_steps=3, guidance_scale=1.0)
    assert len(calls) == 3 and all(x.shape[0] == 3 and h.shape[0] == 3 for x, h in calls)
    assert all(h.abs().sum(dim=(1, 2)).min() > 0 for _, h in calls)


def test_guidance_adds_an_unconditional_branch_with_zeroed_conditioning(pipe):
    calls = unet_calls(pipe, num_inference_steps=2, guidance_scale=3.0)
    assert len(calls) == 2
    for x, hidden in calls:
        assert x.shape == (6, 8, 16, 16) and hidden.shape == (6, 1, 32)
        assert torch.all(hidden[:3] == 0) and torch.all(x[:3, 4:] == 0)  # uncond: zero embeddings, zero latents
        assert hidden[3:].abs().sum() > 0 and x[3:, 4:].abs().sum() > 0
        assert torch.equal(x[:3, :4], x[3:, :4])  # the same noisy latents in both branches


def test_wrong_image_size_is_refused(pipe):
    with pytest.raises(ValueError, match="64×64"):
        pipe(np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 3)), [0])


def test_missing_weights_dir_names_the_path(tmp_path):
    missing = tmp_path / "no-such-zero123"
    with pytest.raises(WeightsError, match="no-such-zero123") as err:
        Zero123Pipeline.from_pretrained(str(missing))
    assert "unet/" in str(err.value) and "cc_projection/" in str(err.value)


def test_missing_subfolder_names_it(tmp_path):
    save_tiny_zero123(tmp_path / "w")
    os.rename(tmp_path / "w" / "cc_projection", tmp_path / "w" / "elsewhere")
    with pytest.raises(WeightsError, match=r"w/cc_projection/ \(CCProjection"):
        Zero123Pipeline.from_pretrained(str(tmp_path / "w"))


def test_view_seed_is_stable_and_distinct():
    assert view_seed(0, "a", 40) == view_seed(0, "a", 40)
    assert len({view_seed(0, "a", 40), view_seed(0, "a", 41), view_seed(1, "a", 40), view_seed(0, "b", 40)}) == 4


# ------------------------------------------------------------------------------------------------- the pass
def one2345_sample(key, resolution=24, neighbours=True):
    rig = one2345(key, resolution=resolution)
    rng = np.random.default_rng(len(key))
    views = [{"rgba": rng.integers(0, 256, (resolution, resolution, 4), dtype=np.uint8),
              "depth": rng.integers(0, 2**16, (resolution, resolution), dtype=np.uint16)} for _ in range(len(rig))]
    meta = {"uid": key, "view_roles": rig.roles, "render": {"rig": "one2345"}, "depth_scale": 1000.0}
    if neighbours:
        meta["neighbours_of"] = {str(k): v for k, v in rig.extra["neighbours_of"].items()}
    return encode_sample(key, views, rig.c2w, rig.K, rig.hw, meta), rig


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for name, data in sample.items():
                if name == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def read_tars(paths):
    out = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for m in tar:
                key, suffix = m.name.split(".", 1)
                out.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return out


def test_pass_appends_predictions_and_records_bad_samples(pipe, weights, tmp_path):
    good, rig = one2345_sample("obj_a")
    no_nbrs, _ = one2345_sample("lrm_like", neighbours=False)
    write_tar(tmp_path / "in.tar", [good, no_nbrs])
    (tmp_path / "broken.tar").write_bytes(b"\x00not a tar" * 100)
    cfg = PassSettings(weights=weights, steps=1, batch_size=16)
    out = tmp_path / "out"
    summary = predict_task([str(tmp_path / "in.tar"), str(tmp_path / "broken.tar")], str(out), cfg, device="cpu",
                           progress=False, pipeline=pipe)
    assert (summary.ok, summary.failed, summary.predicted) == (1, 2, 32)
    (written,) = read_tars(sorted(out.glob("*.tar"))).values()
    for name, data in good.items():
        if name not in ("__key__", "meta.json", "cameras.npz"):
            assert written[name] == data, name
    meta = json.loads(written["meta.json"])
    assert meta["num_views"] == 72 and meta["view_roles"][40:] == ["zero123_pred"] * 32
    assert meta["predictions_of"] == {str(g): list(range(40 + 4 * g, 44 + 4 * g)) for g in range(8)}
    assert meta["zero123"]["steps"] == 1 and meta["predicted_views"] == {"alpha": "opaque", "depth": "none"}
    cams = np.load(io.BytesIO(written["cameras.npz"]))
    assert np.allclose(cams["c2w"][40:], rig.c2w[8:]) and cams["hw"].shape == (72, 2)
    failures = {json.loads(line)["key"]: json.loads(line)["reason"] for line in open(out / "_state" /
                                                                                   "task-00000.failures.jsonl")}
    assert "neighbours_of" in failures["lrm_like"] and "one2345" in failures["lrm_like"]
    assert "unreadable shard" in failures["shard:broken.tar"]


def test_cli_parses_the_documented_command():
    from render_farm.cli import build_parser

    a = build_parser().parse_args(["zero123", "--shards", "data/shards/objaverse/*.tar", "--weights",
                                   "/models/zero123-xl", "--out", "data/shards/one2345"])
    assert (a.shards, a.weights, a.out) == (["data/shards/objaverse/*.tar"], "/models/zero123-xl",
                                            "data/shards/one2345")
    assert (a.steps, a.guidance_scale, a.eta, a.batch_size, a.seed, a.device, a.dtype) == (
        50, 3.0, 1.0, 32, 0, "auto", "float32")
