"""One-2-3-45 view sampling: 2-stage source views + one ground-truth target per object, over format-v1 shards.

A ``one2345``-rig sample holds 8 ``gt`` views and 4 neighbours (±10°) of each: ``gt_neighbor`` renders (the render
farm) and, after ``lift3d-render zero123``, ``zero123_pred`` predictions at the same poses. meta.json maps each gt
view to its neighbours (``neighbours_of``) and its predictions (``predictions_of``), in the same order.

Per object and step (:meth:`One2345ViewSampler.__call__`):

    sources = the gt views (``include_gt_sources``) + for each gt view its 4 neighbours, taken from
              ``neighbours`` = "predicted" (Zero123's views: the ground-truth–prediction mixed training of the paper),
              "ground_truth" (rendered neighbours: the stage without predictions) or "mixed" (predicted with
              probability ``predicted_probability`` per object, else rendered; a schedule mixing both stages)
    target  = one gt view, uniformly at random, with its depth (for the colour, mask and depth losses)

The raw sample carries the target as ``datamodules.views.ViewSampler`` does (N = 1 target; same keys) plus
``source_views`` (M,), ``source_bgra`` M × (Hs, Ws, 4) uint8, ``source_c2w`` (M, 4, 4), ``source_K`` (M, 3, 3) and
``predicted`` (bool: the neighbours are Zero123's); ``views.finalize`` turns ``source_bgra`` into ``source_images``
(M, 3, Hs, Ws) composited over the background and ``source_masks`` (M, 1, Hs, Ws). Predicted views are opaque RGB
over white (no alpha), so white is the background to train with.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

from datamodules.shard_datamodule import ShardDataModule
from datamodules.views import ViewSampler, background_colour
from render_farm.shards import META, CorruptSampleError, check_views, read_header, sample_key, view_member

NEIGHBOURS = ("predicted", "ground_truth", "mixed")


def _index_map(meta: dict, name: str, key: str, num_views: int) -> dict[int, list[int]]:
    """meta.json's ``neighbours_of`` / ``predictions_of`` as {gt view: [view, …]}, checked."""
    raw = meta.get(name)
    if not isinstance(raw, dict) or not raw:
        return {}
    try:
        out = {int(g): [int(v) for v in views] for g, views in raw.items()}
    except (TypeError, ValueError) as exc:
        raise CorruptSampleError(key, META, f"{name} must map view indices to lists of view indices ({exc})",
                                 kind="bad_meta") from exc
    for g, views in out.items():
        if not all(0 <= v < num_views for v in [g, *views]):
            raise CorruptSampleError(key, META, f"{name}[{g}] = {views} names a view outside "
                                     f"0..{num_views - 1}", kind="bad_meta")
    return out


class One2345ViewSampler(ViewSampler):
    """Raw format-v1 sample → the raw One-2-3-45 dict of the module docstring (picklable for DataLoader workers).

    Args:
        neighbours: "predicted", "ground_truth" or "mixed" (see the module docstring).
        predicted_probability: with "mixed", the chance an object's neighbours are the predicted ones.
        include_gt_sources: the gt views join the sources (the paper: 8 gt + 32 neighbours = 40 sources).
        source_size: source views are resized to this square size (0: as stored).
        target_size: the target view's size (0: as stored).
        background: the colour views are composited over ("white" for Zero123's predictions).
    """

    def __init__(self, neighbours: str = "predicted", predicted_probability: float = 0.5,
                 include_gt_sources: bool = True, source_size: int = 256, target_size: int = 0,
                 background: str = "white"):
        super().__init__(num_target_views=1, input_view=0, input_size=source_size, target_size=target_size,
                         background=background)
        if neighbours not in NEIGHBOURS:
            raise ValueError(f"neighbours {neighbours!r}: expected one of {NEIGHBOURS} (Zero123's predicted views, the "
                             "rendered ground-truth neighbours, or a per-object mix)")
        if not 0.0 <= predicted_probability <= 1.0:
            raise ValueError(f"predicted_probability must be in [0, 1], got {predicted_probability!r}")
        self.neighbours, self.predicted_probability = neighbours, predicted_probability
        self.include_gt_sources = include_gt_sources

    def _pick(self, meta: dict, roles: list[str], key: str, rng: np.random.Generator
              ) -> tuple[list[int], list[int], bool]:
        """(gt views, source views, predicted?)."""
        n = len(roles)
        gt = [i for i, r in enumerate(roles) if r == "gt"]
        if not gt:
            raise CorruptSampleError(key, META, "no view has role 'gt': One-2-3-45 needs a one2345-rig "
                                     "sample (render with --rig one2345)", kind="bad_views")
        predicted = {"predicted": True, "ground_truth": False,
                     "mixed": bool(rng.random() < self.predicted_probability)}[self.neighbours]
        name = "predictions_of" if predicted else "neighbours_of"
        table = _index_map(meta, name, key, n)
        missing = [g for g in gt if g not in table]
        if missing:
            fix = ("run `lift3d-render zero123` on these shards first, or set neighbours: ground_truth" if predicted
                   else "render with --rig one2345, or set neighbours: predicted")
            raise CorruptSampleError(key, META, f"{name} has no entry for gt view(s) {missing}: {fix}",
                                     kind="bad_views")
        sources = (list(gt) if self.include_gt_sources else []) + [v for g in gt for v in table[g]]
        return gt, sources, predicted

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = sample_key(sample)
        meta, cams, roles = read_header(sample)
        gt, sources, predicted = self._pick(meta, roles, key, rng)
        target = int(rng.choice(gt))
        check_views(sample, [target, *sources], len(roles))  # fail before decoding anything
        bg = background_colour(self.background, rng)
        cache: dict[int, np.ndarray] = {}
        src = [self._view(sample, i, cams, self.input_size, 0, rng, cache, with_depth=False) for i in sources]
        for i, (bgra, _, _) in zip(sources, src):
            if bgra.shape != src[0][0].shape:
                raise CorruptSampleError(key, view_member(i, "rgba"), f"view is {bgra.shape[0]}x{bgra.shape[1]}, view "
                                         f"{sources[0]} is {src[0][0].shape[0]}x{src[0][0].shape[1]}: set "
                                         "source_size so the views can be stacked", kind="bad_views")
        tgt_bgra, tgt_depth, tgt_K = self._view(sample, target, cams, self.target_size, 0, rng, cache,
                                                with_depth=True)
        c2w = torch.from_numpy(cams["c2w"])
        idx = torch.tensor(sources, dtype=torch.int64)
        return {"key": key, "predicted": predicted,
                "source_views": idx,
                "source_bgra": tuple(torch.from_numpy(np.ascontiguousarray(v[0])) for v in src),
                "source_c2w": c2w[idx],
                "source_K": torch.from_numpy(np.stack([v[2] for v in src]).astype(np.float32)),
                "target_views": torch.tensor([target], dtype=torch.int64),
                "target_bgra": (torch.from_numpy(np.ascontiguousarray(tgt_bgra)),),
                "target_depth16": (torch.from_numpy(np.ascontiguousarray(tgt_depth)),),
                "target_c2w": c2w[target:target + 1],
                "target_K": torch.from_numpy(np.asarray(tgt_K, np.float32)[None]),
                "depth_scale": torch.tensor(float(meta["depth_scale"]), dtype=torch.float32),
                "background": torch.from_numpy(bg)}


class One2345DataModule(ShardDataModule):
    """:class:`ShardDataModule` with the One-2-3-45 sampler; every argument can be set from a ``data:`` block.

    Loader arguments are the ShardDataModule's (epochs, workers, shuffling, resume, bad-data handling); the view
    arguments are :class:`One2345ViewSampler`'s. Validation always uses the predicted neighbours when
    ``neighbours`` is "predicted" or "mixed" (what inference sees), the rendered ones otherwise."""

    def __init__(self, train_shards: Union[str, list[str]], val_shards: Optional[Union[str, list[str]]] = None,
                 batch_size: int = 1, num_workers: int = 4, shuffle_buffer: int = 64, resampled: bool = True,
                 samples_per_epoch: Optional[int] = None, seed: int = 0, neighbours: str = "predicted",
                 predicted_probability: float = 0.5, include_gt_sources: bool = True, source_size: int = 256,
                 target_size: int = 0, background: str = "white", val_background: str = "white",
                 pin_memory: bool = False, persistent_workers: bool = False, finalize_on: str = "auto"):
        super().__init__(train_shards, val_shards, batch_size=batch_size, num_workers=num_workers,
                         shuffle_buffer=shuffle_buffer, resampled=resampled, samples_per_epoch=samples_per_epoch,
                         seed=seed, num_target_views=1, input_size=source_size, target_size=target_size,
                         background=background, val_background=val_background, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, finalize_on=finalize_on)
        view_args: dict[str, Any] = dict(predicted_probability=predicted_probability,
                                         include_gt_sources=include_gt_sources, source_size=source_size,
                                         target_size=target_size)
        self.train_sampler = One2345ViewSampler(neighbours, background=background, **view_args)
        val_neighbours = "ground_truth" if neighbours == "ground_truth" else "predicted"
        self.val_sampler = One2345ViewSampler(val_neighbours, background=val_background, **view_args)

    def predict_dataloader(self):
        """Every object of ``val_shards`` (else ``train_shards``) once, with the validation sampler: what
        ``lift3d predict`` turns into meshes."""
        spec = self.hparams.val_shards or self.hparams.train_shards
        return self._loader(self._dataset(spec, self.val_sampler, train=False), train=False)
