"""One-2-3-45 view sampling (datamodules.one2345) on synthetic one2345-style samples whose views are known."""

import numpy as np
import pytest
import torch

from datamodules.one2345 import One2345DataModule, One2345ViewSampler
from datamodules.views import collate, finalize
from render_farm.shards import CorruptSampleError, ShardWriter, encode_sample
from tests.unit.datamodules.conftest import DEPTH_SCALE, make_object, plane_depth, square_colour

NUM_GT = 2  # gt views 0, 1; rendered neighbours 2..9; predictions 10..17


def one2345_sample(key: str = "obj", predictions: bool = True) -> dict:
    n = NUM_GT * (1 + 4 + (4 if predictions else 0))
    roles = ["gt"] * NUM_GT + ["gt_neighbor"] * 4 * NUM_GT + (["zero123_pred"] * 4 * NUM_GT if predictions else [])
    views, c2w, K, hw, meta = make_object(key, n_views=n, size=32, roles=roles)
    meta["neighbours_of"] = {str(g): list(range(NUM_GT + 4 * g, NUM_GT + 4 * g + 4)) for g in range(NUM_GT)}
    if predictions:
        meta["predictions_of"] = {str(g): list(range(5 * NUM_GT + 4 * g, 5 * NUM_GT + 4 * g + 4))
                                  for g in range(NUM_GT)}
    return encode_sample(key, views, c2w, K, hw, meta)


def centre_colour(img: torch.Tensor) -> tuple[int, ...]:
    """RGB (0..255) at the centre of a (3, H, W) float image."""
    h, w = img.shape[-2:]
    return tuple(int(round(float(c) * 255)) for c in img[:, h // 2, w // 2])


@pytest.mark.parametrize("neighbours, expected", [
    ("predicted", [0, 1, 10, 11, 12, 13, 14, 15, 16, 17]),
    ("ground_truth", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
])
def test_sources_are_the_gt_views_and_the_chosen_neighbours(neighbours, expected):
    sampler = One2345ViewSampler(neighbours, source_size=0)
    raw = sampler(one2345_sample(), np.random.default_rng(0))
    assert raw["source_views"].tolist() == expected
    assert raw["predicted"] == (neighbours == "predicted")
    assert raw["target_views"].item() in (0, 1)
    out = finalize(collate([raw]))
    assert out["source_images"].shape == (1, len(expected), 3, 32, 32)
    for m, view in enumerate(expected):  # each source image is that view's picture, its camera that view's
        assert centre_colour(out["source_images"][0, m]) == square_colour(view)
    target = raw["target_views"].item()
    assert torch.equal(out["target_c2w"][0, 0], out["source_c2w"][0, expected.index(target)])
    depth = out["target_depths"][0, 0, 0]
    assert float(depth[16, 16]) == pytest.approx(plane_depth(target), abs=1.0 / DEPTH_SCALE)
    assert float(out["target_masks"][0, 0, 0, 0, 0]) == 0.0 and float(out["target_images"][0, 0, :, 0, 0].min()) == 1.0


def test_targets_cover_every_gt_view_and_only_those():
    sampler = One2345ViewSampler("predicted", source_size=0)
    sample = one2345_sample()
    seen = {sampler(sample, np.random.default_rng(s))["target_views"].item() for s in range(40)}
    assert seen == {0, 1}


def test_without_gt_sources_only_neighbours_remain():
    raw = One2345ViewSampler("ground_truth", include_gt_sources=False, source_size=0)(one2345_sample(),
                                                                                     np.random.default_rng(0))
    assert raw["source_views"].tolist() == list(range(2, 10))


@pytest.mark.parametrize("probability, predicted", [(0.0, False), (1.0, True)])
def test_mixed_follows_its_probability(probability, predicted):
    sampler = One2345ViewSampler("mixed", predicted_probability=probability, source_size=0)
    for seed in range(5):
        assert sampler(one2345_sample(), np.random.default_rng(seed))["predicted"] is predicted


def test_mixed_draws_both_kinds():
    sampler = One2345ViewSampler("mixed", predicted_probability=0.5, source_size=0)
    kinds = [sampler(one2345_sample(), np.random.default_rng(s))["predicted"] for s in range(40)]
    assert 5 < sum(kinds) < 35


def test_sources_are_resized_with_their_intrinsics():
    raw = One2345ViewSampler("ground_truth", source_size=16)(one2345_sample(), np.random.default_rng(0))
    assert raw["source_bgra"][0].shape == (16, 16, 4)
    assert raw["source_K"][0, 0, 2].item() == pytest.approx(8.0)  # principal point of a centred 16² camera
    assert raw["target_bgra"][0].shape == (32, 32, 4)  # target_size 0: as stored


def test_samples_without_predictions_name_the_fix():
    with pytest.raises(CorruptSampleError, match="lift3d-render zero123"):
        One2345ViewSampler("predicted")(one2345_sample(predictions=False), np.random.default_rng(0))


def test_samples_without_gt_views_name_the_rig():
    views, c2w, K, hw, meta = make_object("lrm", n_views=4, size=32, roles=["source", "x", "x", "x"])
    with pytest.raises(CorruptSampleError, match="--rig one2345"):
        One2345ViewSampler("ground_truth")(encode_sample("lrm", views, c2w, K, hw, meta), np.random.default_rng(0))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="neighbours"):
        One2345ViewSampler("zero123")
    with pytest.raises(ValueError, match="predicted_probability"):
        One2345ViewSampler("mixed", predicted_probability=1.5)


def test_datamodule_batches_and_skips_unusable_samples(tmp_path):
    """Real shards through the DataModule: every usable object once per epoch (exact epochs), a sample without
    predictions skipped and counted, and validation on the predicted neighbours."""
    with ShardWriter(str(tmp_path), maxcount=8) as writer:
        for key in ("a", "b", "c"):
            writer.write(one2345_sample(key))
        writer.write(one2345_sample("no_preds", predictions=False))
    dm = One2345DataModule(str(tmp_path), val_shards=str(tmp_path), batch_size=1, num_workers=0, shuffle_buffer=0,
                           resampled=False, neighbours="mixed", predicted_probability=0.0, source_size=0,
                           finalize_on="workers")
    dm.setup("fit")
    keys = [b["key"][0] for b in dm.train_dataloader()]
    assert sorted(keys) == ["a", "b", "c", "no_preds"]  # mixed with p = 0: rendered neighbours, all usable
    val = list(dm.val_dataloader())
    assert sorted(b["key"][0] for b in val) == ["a", "b", "c"]  # validation uses predictions: no_preds skipped
    assert dm.errors == {"bad_views": 1}
    assert val[0]["source_images"].shape == (1, 10, 3, 32, 32) and val[0]["source_views"][0, -1].item() == 17
