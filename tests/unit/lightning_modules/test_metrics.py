"""Evaluation metrics against hand-computed cases: geometry protocol (Chamfer, F-score, alignment, volume IoU) and
appearance (PSNR, SSIM vs skimage, LPIPS, CLIP similarity)."""

import logging
import math
import re

import numpy as np
import pytest
import torch
import trimesh
from skimage.metrics import structural_similarity

from geometry.mesh import chamfer_distance, sample_surface
from lightning_modules.metrics import (
    FSCORE_TAUS,
    CLIPSimilarity,
    LPIPSMetric,
    align,
    cube_rotations,
    geometry_metrics,
    icp,
    image_metrics,
    is_watertight,
    mean_psnr,
    mesh_metrics,
    psnr,
    rotation_angle_deg,
    ssim,
    volume_iou,
    yaw_rotations,
)
from lightning_modules.metrics.geometry import points_inside
from lightning_modules.metrics.image import CLIP_SKIP_MESSAGE
from tests.weights import save_tiny_clip

FSCORE_KEYS = [f"fscore@{t:g}" for t in FSCORE_TAUS]


# ---------------------------------------------------------------- shapes

def rot_z(deg: float) -> np.ndarray:
    th = math.radians(deg)
    return np.array([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    th = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(th), -math.sin(th)], [0.0, math.sin(th), math.cos(th)]])


def l_prism() -> tuple[np.ndarray, np.ndarray]:
    """A closed L-shaped prism (arms 1.2 and 0.9 long, 0.4 wide, 0.3 high): no proper rotation maps it onto itself."""
    outline = np.array([(0, 0), (1.2, 0), (1.2, 0.4), (0.4, 0.4), (0.4, 0.9), (0, 0.9)], dtype=float) - (0.5, 0.35)
    n = len(outline)
    verts = np.concatenate([np.c_[outline, np.full(n, -0.15)], np.c_[outline, np.full(n, 0.15)]])
    fan = [(0, i, i + 1) for i in range(1, n - 1)]  # the L is star-shaped from corner 0; counter-clockwise from above
    faces = [(a + n, b + n, c + n) for a, b, c in fan] + [(a, c, b) for a, b, c in fan]
    for i in range(n):
        j = (i + 1) % n
        faces += [(i, j, j + n), (i, j + n, i + n)]
    return verts, np.array(faces)


def unit_cube() -> tuple[np.ndarray, np.ndarray]:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    return np.asarray(box.vertices, dtype=float), np.asarray(box.faces)


def test_l_prism_is_a_closed_outward_solid():
    verts, faces = l_prism()
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert is_watertight(verts, faces) and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx((1.2 * 0.4 + 0.4 * 0.5) * 0.3)  # positive: normals point out


# ---------------------------------------------------------------- rotation grids and ICP

def test_rotation_grids():
    yaw = yaw_rotations(4)
    assert np.allclose(yaw[0], np.eye(3)) and np.allclose(yaw[1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert np.allclose(yaw_rotations()[7], rot_z(70.0)) and len(yaw_rotations()) == 36
    cube = cube_rotations()
    assert cube.shape == (24, 3, 3) and np.allclose(cube[0], np.eye(3))
    assert np.allclose(np.einsum("nij,nkj->nik", cube, cube), np.eye(3)) and np.allclose(np.linalg.det(cube), 1.0)
    keys = {tuple(np.round(c).astype(int).ravel()) for c in cube}
    assert len(keys) == 24  # all distinct, and closed under composition: the cube's rotation group
    assert all(tuple(np.round(a @ b).astype(int).ravel()) in keys for a in cube for b in cube)
    assert rotation_angle_deg(rot_z(-73.0)) == pytest.approx(73.0)
    assert rotation_angle_deg(np.diag([-1.0, -1.0, 1.0])) == pytest.approx(180.0)


def test_icp_recovers_a_small_rigid_motion():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(500, 3)) * (1.0, 0.6, 0.3)  # anisotropic: the motion is well defined
    R_true, t_true = rot_z(8.0) @ rot_x(5.0), np.array([0.05, -0.02, 0.03])
    source = (target - t_true) @ R_true  # so that source @ R_true.T + t_true == target
    R, t, err = icp(source, target, iterations=50, tol=1e-12)
    assert np.allclose(R, R_true, atol=1e-6) and np.allclose(t, t_true, atol=1e-6) and err < 1e-6
    _, _, err0 = icp(source, target, iterations=0)
    assert err0 > 0.01  # the start was off; no iterations → the start's distance
    with pytest.raises(ValueError, match="R0 must be"):
        icp(source, target, R0=np.eye(2))


# ---------------------------------------------------------------- Chamfer / F-score

def test_identical_shapes_score_perfectly_with_and_without_alignment():
    verts, faces = l_prism()
    for align_to_gt in (False, True, "cube"):
        out = mesh_metrics(verts, faces, (verts, faces), num_points=3000, align_to_gt=align_to_gt)
        assert out["chamfer"] == 0.0 and all(out[k] == 1.0 for k in FSCORE_KEYS)
        assert out["align_rotation_deg"] == 0.0 and out["align_translation"] == 0.0  # identity wins the tie
        assert out["volume_iou"] == 1.0 and out["num_points"] == 3000
    points = sample_surface(verts, faces, 2000, seed=3)
    out = geometry_metrics(points, points.copy())
    assert out["chamfer"] == 0.0 and all(out[k] == 1.0 for k in FSCORE_KEYS)
    assert set(out) == {"chamfer", *FSCORE_KEYS, "align_rotation_deg", "align_translation"}


def test_concentric_spheres_chamfer_is_the_radius_gap():
    ico = trimesh.creation.icosphere(subdivisions=5)  # unit sphere, 20480 faces
    unit_v, sphere_f = np.asarray(ico.vertices), np.asarray(ico.faces)
    r, delta, n = 0.5, 0.075, 20_000
    inner = sample_surface(unit_v * r, sphere_f, n, seed=0)
    outer = sample_surface(unit_v * (r + delta), sphere_f, n, seed=1)
    out = geometry_metrics(outer, inner, align_to_gt=False)

    # Lower bound, exact: both meshes are the same convex polytope scaled about the origin, so every point of one is
    # at least delta · h_min from the other, h_min the smallest distance of a face plane of the unit mesh to 0.
    tri = unit_v[sphere_f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    h_min = np.min(np.abs(np.sum(normals * tri[:, 0], axis=1)) / np.linalg.norm(normals, axis=1))
    lower = delta * h_min
    # Upper bound from the sampling density rho = n / area: a point's nearest sample on the other surface is delta
    # away radially and d away tangentially, with E[d²] = 1 / (pi rho) for uniform samples; by Jensen the mean
    # distance is at most sqrt(delta² + E[d²]) — doubled E[d²] as the margin for the sample mean.
    area = 4 * math.pi * (r + delta) ** 2
    e_d2 = area / (math.pi * n)
    assert lower <= out["chamfer"] <= math.sqrt(delta ** 2 + 2 * e_d2)
    # F-score: no pair is closer than delta · h_min (> 0.05) → 0; the largest empty disc among n uniform samples has
    # radius about sqrt(area · ln n / (pi n)); doubled, every nearest neighbour is within
    # sqrt(delta² + (2 r_max)²) ≈ 0.091 < 0.1 → 1 for tau = 0.1, 0.2, 0.5.
    r_max = math.sqrt(area * math.log(n) / (math.pi * n))
    farthest = math.sqrt(delta ** 2 + (2 * r_max) ** 2)
    for tau in FSCORE_TAUS:
        expected = 0.0 if tau < lower else 1.0 if tau > farthest else None
        assert expected is not None, f"tau {tau} falls between the bounds; pick another delta"
        assert out[f"fscore@{tau:g}"] == expected, tau


def test_alignment_recovers_a_yaw_and_a_shift():
    verts, faces = l_prism()
    shift = np.array([0.05, -0.03, 0.02])
    moved = verts @ rot_z(73.0).T + shift  # 73°: off the 10° grid, ICP has to finish the job
    aligned = mesh_metrics(moved, faces, (verts, faces), num_points=5000)
    raw = mesh_metrics(moved, faces, (verts, faces), num_points=5000, align_to_gt=False)
    # same seed, same faces: the prediction's samples are exactly the moved ground-truth samples, so a perfect
    # alignment scores 0; independent resampling of the same surface scores this "floor":
    floor = chamfer_distance(sample_surface(verts, faces, 5000, seed=0), sample_surface(verts, faces, 5000, seed=1))
    assert aligned["chamfer"] < 0.2 * floor and aligned["fscore@0.05"] == 1.0
    assert aligned["align_rotation_deg"] == pytest.approx(73.0, abs=0.5)  # the L has no rotational symmetry
    # the inverse motion p ↦ Rz(−73°)(p − shift) has |t| = |shift|
    assert aligned["align_translation"] == pytest.approx(np.linalg.norm(shift), abs=0.01)
    assert aligned["volume_iou"] > 0.95
    assert raw["chamfer"] > 30 * aligned["chamfer"] and raw["chamfer"] > 0.1
    assert raw["align_rotation_deg"] == 0.0 and raw["volume_iou"] < 0.5


def test_cube_grid_fixes_an_upside_down_prediction_the_yaw_grid_cannot():
    verts, faces = l_prism()
    gt = sample_surface(verts, faces, 4000, seed=0)
    floor = chamfer_distance(gt, sample_surface(verts, faces, 4000, seed=1))  # resampling the same surface
    # upside down (Rx(180°): the mirror image of the L in the plane, which no yaw can turn back), then a 43° yaw;
    # the whole motion is a 180° turn about a horizontal axis
    pred = gt @ (rot_z(43.0) @ rot_x(180.0)).T
    yaw = geometry_metrics(pred, gt, align_to_gt="yaw")
    cube = geometry_metrics(pred, gt, align_to_gt="cube")
    assert cube["chamfer"] < 0.1 * floor and cube["align_rotation_deg"] == pytest.approx(180.0, abs=1.0)
    assert yaw["chamfer"] > floor


def test_alignment_is_never_worse_than_none():
    rng = np.random.default_rng(1)
    for trial in range(3):  # unrelated blobs: whatever the search finds, the identity stays a candidate
        a = rng.normal(size=(800, 3)) * rng.uniform(0.2, 1.0, size=3)
        b = rng.normal(size=(700, 3)) * rng.uniform(0.2, 1.0, size=3) + rng.normal(scale=0.1, size=3)
        R, t = align(a, b, seed=trial)
        assert chamfer_distance(a @ R.T + t, b) <= chamfer_distance(a, b)
        assert geometry_metrics(a, b)["chamfer"] <= geometry_metrics(a, b, align_to_gt=False)["chamfer"]


def test_geometry_inputs_are_checked():
    pts = np.zeros((10, 3))
    with pytest.raises(ValueError, match=r"pred_points must be an \(N, 3\) array.*\(10, 2\)"):
        geometry_metrics(np.zeros((10, 2)), pts)
    with pytest.raises(ValueError, match="non-finite"):
        geometry_metrics(np.full((10, 3), np.nan), pts)
    with pytest.raises(ValueError, match="align_to_gt must be True.*'sideways'"):
        geometry_metrics(pts, pts, align_to_gt="sideways")
    with pytest.raises(ValueError, match="rotations must be one of"):
        align(pts, pts, rotations="so3")


# ---------------------------------------------------------------- volume IoU

def test_points_inside_matches_trimesh_contains():
    verts, faces = l_prism()
    points = np.random.default_rng(0).uniform(-0.8, 0.8, size=(1500, 3))
    expected = trimesh.Trimesh(verts, faces, process=False).contains(points)
    assert 0 < expected.sum() < len(points) and np.array_equal(points_inside(verts, faces, points), expected)


def test_volume_iou_of_shifted_cubes():
    verts, faces = unit_cube()
    n = 32768
    iou = volume_iou(verts + (0.5, 0.0, 0.0), faces, verts, faces, num_points=n)
    # the union is the whole 1.5 × 1 × 1 sampling box, so the estimate is the fraction of samples in the
    # 0.5 × 1 × 1 overlap: binomial, p = 1/3, standard error sqrt(p (1 − p) / n) ≈ 0.0026; 4 standard errors
    p = 1 / 3
    assert iou == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    assert volume_iou(verts, faces, verts, faces, num_points=4096) == 1.0
    undo = (np.eye(3), np.array([-0.5, 0.0, 0.0]))  # transform maps the prediction back onto the gt cube
    assert volume_iou(verts + (0.5, 0.0, 0.0), faces, verts, faces, num_points=4096, transform=undo) == 1.0


def test_volume_iou_needs_watertight_meshes():
    verts, faces = unit_cube()
    open_faces = faces[2:]  # one side (two triangles) removed
    assert is_watertight(verts, faces) and not is_watertight(verts, open_faces)
    assert volume_iou(verts, open_faces, verts, faces) is None
    assert volume_iou(verts, faces, verts, open_faces) is None
    copies, per_face = verts[faces].reshape(-1, 3), np.arange(faces.size).reshape(-1, 3)  # per-face vertex copies
    assert not is_watertight(copies, per_face)  # process=False: duplicates are not merged


def test_mesh_metrics_with_a_point_cloud_gt():
    verts, faces = l_prism()
    gt_points = sample_surface(verts, faces, 6000, seed=5)  # e.g. back-projected depth
    out = mesh_metrics(verts, faces, gt_points, num_points=4000)
    assert out["volume_iou"] is None and out["num_points"] == 4000
    assert out["chamfer"] < 0.03 and out["fscore@0.1"] == 1.0  # the same surface, sampled differently
    assert set(out) == {"chamfer", *FSCORE_KEYS, "align_rotation_deg", "align_translation", "volume_iou",
                        "num_points"}
    few = mesh_metrics(verts, faces, gt_points[:100], num_points=4000, align_to_gt=False)  # fewer: used as is
    assert few["fscore@0.5"] == 1.0 and few["fscore@0.05"] < 1.0
    with pytest.raises(ValueError, match=r"gt as a tuple must be \(verts, faces\)"):
        mesh_metrics(verts, faces, (verts, faces, None))


# ---------------------------------------------------------------- PSNR

def test_psnr_of_hand_computed_errors():
    target = torch.full((2, 3, 8, 8), 0.5)
    assert torch.allclose(psnr(target + 0.1, target), torch.tensor([20.0, 20.0]), atol=1e-5)  # MSE 0.01
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1.0
    pred = target.clone()
    pred[..., 4:] += 0.2  # errors only outside the mask: masked MSE 0 → the 1e-10 clamp → 100 dB
    assert torch.allclose(psnr(pred, target, mask), torch.tensor([100.0, 100.0]))
    assert torch.allclose(psnr(pred, target), torch.full((2,), -10 * math.log10(0.02)), atol=1e-4)  # half of 0.04

    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 16, 16))
    shifted = np.roll(img, 1, axis=-1)  # one pixel to the right
    expected = -10 * np.log10(np.mean((shifted - img) ** 2, axis=(1, 2, 3)))
    got = psnr(torch.from_numpy(shifted).float(), torch.from_numpy(img).float())
    assert got.shape == (2,) and np.allclose(got.numpy(), expected, atol=1e-4)
    fg = rng.random((2, 1, 16, 16)) > 0.5
    expected_masked = [-10 * np.log10(np.mean(((shifted[i] - img[i]) ** 2)[:, fg[i, 0]])) for i in range(2)]
    got_masked = psnr(torch.from_numpy(shifted).float(), torch.from_numpy(img).float(), torch.from_numpy(fg).float())
    assert np.allclose(got_masked.numpy(), expected_masked, atol=1e-4)


def test_mean_psnr_is_the_mean_of_per_image_psnrs_not_the_psnr_of_the_pooled_mse():
    target = torch.zeros(2, 3, 3, 4, 4)  # 2 objects × 3 views
    pred = target + torch.tensor([0.1, 0.01, 0.1, 0.01, 0.1, 0.01]).view(2, 3, 1, 1, 1)  # 20 dB and 40 dB views
    assert mean_psnr(pred, target).item() == pytest.approx(30.0, abs=1e-4)
    pooled = -10 * np.log10(np.mean([0.01, 0.0001]))
    assert abs(mean_psnr(pred, target).item() - pooled) > 5  # the old training number: 23 dB
    mask = torch.ones(2, 3, 1, 4, 4)
    mask[0, 0] = 0  # a view without foreground has no masked PSNR: left out of the mean
    expected = psnr(pred.flatten(0, 1)[1:], target.flatten(0, 1)[1:]).mean().item()
    assert mean_psnr(pred, target, mask).item() == pytest.approx(expected, abs=1e-4)


def test_masked_metrics_of_an_empty_mask_are_nan_and_shapes_are_checked():
    img = torch.rand(1, 3, 16, 16)
    empty = torch.zeros(1, 1, 16, 16)
    assert torch.isnan(psnr(img, img * 0.5, empty)).all() and torch.isnan(ssim(img, img * 0.5, empty)).all()
    with pytest.raises(ValueError, match=r"mask must have shape \(B, 1, H, W\)"):
        psnr(img, img, torch.ones(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"same shape \(B, 3, H, W\)"):
        ssim(img, img[..., :8])
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(img[..., :8, :8], img[..., :8, :8])


# ---------------------------------------------------------------- SSIM

def skimage_ssim(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    return np.array([structural_similarity(p.permute(1, 2, 0).double().numpy(), t.permute(1, 2, 0).double().numpy(),
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0, channel_axis=-1) for p, t in zip(pred, target, strict=True)])


def test_ssim_matches_skimage():
    torch.manual_seed(0)
    noise = torch.rand(2, 3, 24, 31)  # no structure, odd sizes
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 36), indexing="ij")
    smooth = torch.stack([torch.sin(6 * xx) * 0.4 + 0.5, yy, (xx - 0.5) ** 2 + (yy > 0.5) * 0.5])
    structured = torch.stack([smooth, smooth.flip(-1)])  # gradients, an edge
    for target in (noise, structured):
        pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
        got = ssim(pred, target)
        assert got.shape == (2,) and np.allclose(got.numpy(), skimage_ssim(pred, target), atol=1e-4)
        assert torch.allclose(ssim(target, target), torch.ones(2), atol=1e-6)
        # an all-foreground mask is the unmasked SSIM
        assert torch.allclose(ssim(pred, target, torch.ones_like(target[:, :1])), got, atol=1e-6)


def test_masked_ssim_ignores_the_background():
    torch.manual_seed(1)
    target = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 6:26] = 1.0
    pred = torch.where(mask > 0.5, target, torch.rand_like(target))  # identical inside, noise outside
    assert torch.allclose(ssim(pred, target, mask), torch.ones(2), atol=1e-6)
    assert (ssim(pred, target) < 0.9).all()


# ---------------------------------------------------------------- LPIPS

@pytest.fixture(scope="module")
def lpips_metric():
    torch.manual_seed(0)
    return LPIPSMetric(pretrained_backbone=False)  # random VGG backbone, the wheel's LPIPS heads


def test_lpips_metric_per_image_and_masked(lpips_metric):
    torch.manual_seed(0)
    target = torch.rand(2, 3, 64, 64)
    same = lpips_metric(target, target)
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    pred = target.clone()
    pred[1] = torch.rand(3, 64, 64)
    per_image = lpips_metric(pred, target)
    assert per_image[0].abs() < 1e-6 and per_image[1] > 0  # one value per image, not a batch mean
    loss = lpips_metric.loss
    assert loss(pred, target).item() == pytest.approx(per_image.mean().item(), rel=1e-5)  # same network as the loss
    assert loss(pred, target).item() == pytest.approx(loss.net(pred * 2 - 1, target * 2 - 1).mean().item(), rel=1e-6)

    mask = torch.zeros(2, 1, 64, 64)
    mask[..., :, :32] = 1.0
    outside = torch.where(mask > 0.5, target, torch.rand_like(target))  # differs only on the right half
    unmasked = lpips_metric(outside, target)
    masked = lpips_metric(outside, target, mask)
    background = lpips_metric(outside, target, 1.0 - mask)
    assert loss.net.spatial is False  # the spatial flag is switched back after a masked call
    # 64 is divisible by VGG's 16× pooling, so the spatial map's mean is the per-image value: an all-ones mask
    # reproduces it, and unmasked = (masked + background) / 2 for a half/half mask
    assert torch.allclose(lpips_metric(outside, target, torch.ones_like(mask)), unmasked, rtol=1e-4, atol=1e-7)
    assert torch.allclose(unmasked, (masked + background) / 2, rtol=1e-4, atol=1e-7)
    # deep features see across the mask border, so the foreground still gets some of the background's distance
    # (not 0), but less than the image as a whole and much less than the background itself
    assert (masked > 0).all() and (masked < unmasked).all() and (background > 2 * masked).all()
    shared = LPIPSMetric(loss=loss)
    assert shared.loss is loss and torch.equal(shared(outside, target), unmasked)


# ---------------------------------------------------------------- CLIP

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_similarity_from_a_local_directory(clip_dir):
    clip = CLIPSimilarity.from_path(str(clip_dir))
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 48, 40), torch.rand(3, 3, 48, 40)
    same = clip(a, a)
    assert same.shape == (3,) and torch.allclose(same, torch.ones(3), atol=1e-5)
    ab, ba = clip(a, b), clip(b, a)
    assert torch.allclose(ab, ba, atol=1e-6) and (ab < 1 - 1e-5).all() and (ab >= -1).all()


def test_clip_similarity_paths(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert CLIPSimilarity.from_path(None) is None
    assert CLIP_SKIP_MESSAGE in caplog.messages
    assert "set clip_weights to a directory saved by transformers' CLIPModel.save_pretrained" in CLIP_SKIP_MESSAGE
    missing = tmp_path / "no-such-clip"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + ".*save_pretrained"):
        CLIPSimilarity.from_path(str(missing))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        CLIPSimilarity.from_path(str(tmp_path))


def test_image_metrics_keys(lpips_metric, clip_dir):
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    mask = torch.ones(2, 1, 32, 32)
    base = image_metrics(pred, target, mask)
    assert set(base) == {"psnr", "ssim", "psnr_masked", "ssim_masked"}
    assert torch.allclose(base["psnr_masked"], base["psnr"]) and torch.allclose(base["ssim_masked"], base["ssim"])
    full = image_metrics(pred, target, mask, lpips=lpips_metric, clip=CLIPSimilarity.from_path(str(clip_dir)))
    assert set(full) == set(base) | {"lpips", "lpips_masked", "clip"}
    assert all(v.shape == (2,) for v in full.values())
