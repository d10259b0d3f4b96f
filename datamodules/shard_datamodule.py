"""ShardDataModule: format-v1 WebDataset shards → view-sampled batches (see ``datamodules.views`` for the dict).

Two epoch modes:

* ``resampled: true`` — streaming: each DataLoader worker draws shards with replacement forever, cut to
  ``samples_per_epoch`` (global, split evenly over ranks and workers) with webdataset's ``with_epoch``. Every rank
  sees the same number of batches, so this is the mode for multi-GPU training.
* ``resampled: false`` — exact epochs: shards are split by node (rank) and then by worker, each sample is read
  once per epoch. ``index.json`` sample counts, when present, give the epoch length. Ranks whose shards hold
  different numbers of samples yield different numbers of batches (a warning says so); use it for validation or
  single-process runs.

Bad data never stops a run: an unreadable shard (a webdataset handler) or a corrupt member (the decoder's
:class:`~render_farm.shards.CorruptSampleError`) is logged — shard URL, key, member, reason — skipped, and counted
in ``ShardDataModule.errors`` (kind → count, summed over the main process and DataLoader workers through a
shared-memory tensor; best effort).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import os
import random
import warnings
import zipfile
import zlib
from typing import Any, Optional, Union

import cv2
import lightning as L
import numpy as np
import torch
import webdataset as wds
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.views import ViewSampler, collate, finalize
from render_farm.shards import KINDS, CorruptSampleError, TarScanError, resolve_shards, scan_samples

log = logging.getLogger(__name__)
# Lightning warns about every IterableDataset with a __len__ that it may be inaccurate under several workers unless
# each worker reads its own data. ShardDataset's is exact: each worker reads its own shards and __len__ counts each
# worker's batches (_worker_sample_counts), which is what makes the epoch lengths and the resume arithmetic right.
# The caveat (the warning's text, matched exactly) does not apply to it; Lightning offers no per-dataset way to say so.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined\. In combination with "
                        r"multi-process data loading")
MAX_WORKERS = 256  # rows of the shared error-counter tensor: row 0 = main process, row 1 + w = worker w

DATA_ERRORS = (CorruptSampleError, ValueError, KeyError, IndexError, OSError, EOFError, cv2.error,
               zipfile.BadZipFile)


class ShardDataset(IterableDataset):
    """Iterable over view-sampled samples of some shards; the pipeline is built per epoch in each worker."""

    def __init__(self, urls: list[str], sampler: ViewSampler, counts: Optional[dict[str, int]] = None,
                 resampled: bool = False, samples_per_epoch: Optional[int] = None, shuffle_buffer: int = 0,
                 seed: int = 0, num_workers: int = 0, batch_size: int = 1, fixed_views: bool = False,
                 error_counts: Optional[torch.Tensor] = None, finalize: bool = False):
        if not urls:
            raise ValueError("ShardDataset needs at least one shard URL")
        if resampled and not samples_per_epoch:
            raise ValueError("resampled=True streams forever: set samples_per_epoch to the epoch length you want")
        self.urls, self.sampler, self.counts = list(urls), sampler, dict(counts or {})
        self.resampled, self.samples_per_epoch = resampled, samples_per_epoch
        self.shuffle_buffer, self.seed, self.num_workers = shuffle_buffer, seed, num_workers
        self.batch_size, self.fixed_views = batch_size, fixed_views  # fixed: the same views every epoch (val)
        self.finalize = finalize  # composite + float conversion per sample here, rather than on the device
        self.error_counts = error_counts if error_counts is not None else torch.zeros(MAX_WORKERS + 1, len(KINDS),
                                                                                      dtype=torch.int64)
        self.epoch = 0  # set by the DataLoader each epoch (``set_epoch``)
        self._iters_since_set = 0  # persistent workers never see set_epoch: count epochs locally from it
        self._url = "?"
        self.rank_world: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int, salt: int = 0) -> None:
        """``salt`` > 0 gives the epoch a different random stream (a resumed, partly finished resampled epoch)."""
        self.epoch, self._iters_since_set, self._salt = epoch, 0, salt

    # --- error reporting ----------------------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % MAX_WORKERS
        self.error_counts[row, KINDS.index(kind)] += 1

    def report(self, url: str, key: str, member: str, reason: str, kind: str) -> None:
        self._count(kind)
        log.warning("skipping corrupt data (%s): shard=%s key=%s member=%s reason=%s", kind, url, key, member, reason)

    def handle_shard_error(self, exn: BaseException) -> bool:
        """webdataset ``handler=``: log + count an unreadable shard / tar member and carry on (returns True)."""
        urls = [a for a in getattr(exn, "args", ()) if isinstance(a, str) and a in self.urls]
        detail = exn.args[0] if getattr(exn, "args", None) else exn
        self.report(urls[-1] if urls else self._url, "-", "-", f"{type(exn).__name__}: {detail}", "shard_read")
        return True

    # --- pipeline -----------------------------------------------------------------------------------------
    def node_info(self) -> tuple[int, int]:
        """(rank, world size): recorded by the DataModule when it builds the loader, else webdataset's view."""
        if self.rank_world is not None:
            return self.rank_world
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        return rank, world

    def _split_by_node(self, src):
        rank, world = self.node_info()
        yield from itertools.islice(src, rank, None, world)

    def _samples(self, src):
        """Shard URLs → samples: local files through the seek-based reader (only the members a view sampler asks
        for are ever read), anything else (pipe:, http) through webdataset's streaming tar reader."""
        for item in src:
            url = self._url = item["url"]
            if "://" in url or url.startswith("pipe:") or not os.path.isfile(url):
                yield from wds.tarfile_to_samples(handler=self.handle_shard_error)([item])
                continue
            try:
                yield from scan_samples(url)
            except TarScanError as exc:
                if exc.dropped is not None:
                    self.report(url, exc.dropped, exc.member, "sample lost: " + exc.reason, "shard_read")
                self.report(url, exc.key, exc.member, exc.reason, exc.kind)
            except OSError as exc:
                self.report(url, "-", "-", f"{type(exc).__name__}: {exc}", "shard_read")

    def _epoch_shards(self, src):
        """Exact epochs: this worker's shards (a fixed set) in a new order each epoch."""
        items = list(src)
        rank, worker = self.node_info()[0], wds.utils.pytorch_worker_info()[2]
        random.Random(f"{self.seed}|{self._epoch_id()}|{rank}|{worker}").shuffle(items)
        yield from items

    def _shuffle(self, src):
        if self.shuffle_buffer <= 1:
            yield from src
            return
        rank, worker = self.node_info()[0], wds.utils.pytorch_worker_info()[2]
        rng = random.Random(f"{self.seed}|{self._epoch_id()}|{rank}|{worker}")
        buf = []
        for sample in src:
            buf.append(sample)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _decode(self, src):
        for sample in src:
            key, url = str(sample.get("__key__", "?")), str(sample.get("__url__", self._url))
            rng = np.random.default_rng([self.seed, self._epoch_id(), zlib.crc32(key.encode())])
            try:
                out = self.sampler(sample, rng)
                yield finalize(out) if self.finalize else out
            except CorruptSampleError as exc:
                self.report(url, exc.key, exc.member, exc.reason, exc.kind)
            except DATA_ERRORS as exc:  # anything else the bytes can make cv2/numpy raise
                self.report(url, key, "?", f"{type(exc).__name__}: {exc}", "decode_error")

    def _epoch_id(self) -> int:
        if self.fixed_views:
            return 0
        # the epoch set last, plus the iterations since (persistent workers keep their copy across epochs), so the
        # same epoch number gives the same shard order and views in a fresh or a resumed run
        return self.epoch + max(0, self._iters_since_set - 1) + (1 << 20) * getattr(self, "_salt", 0)

    def _worker_sample_counts(self) -> list[int]:
        """Samples each DataLoader worker of this rank yields per epoch (from the process that builds the loader)."""
        rank, world = self.node_info()
        workers = max(1, self.num_workers)
        if self.resampled:
            assert self.samples_per_epoch is not None  # __init__ requires it with resampled
            return [math.ceil(self.samples_per_epoch / world / workers)] * workers
        mine = self.urls[rank::world]
        if not all(u in self.counts for u in mine):
            raise TypeError("epoch length unknown: the shards have no index.json sample counts")
        return [sum(self.counts[u] for u in mine[w::workers]) for w in range(workers)]

    def __len__(self) -> int:
        """A sample count whose ceil-division by ``batch_size`` is the exact number of batches of this rank.

        (Each worker ends the epoch with its own partial batch, so this can exceed the true sample count.)
        """
        bs = self.batch_size
        return bs * sum(math.ceil(n / bs) for n in self._worker_sample_counts())

    def __iter__(self):
        self._iters_since_set += 1
        if self.resampled:
            rank, worker = self.node_info()[0], wds.utils.pytorch_worker_info()[2]
            shards = wds.ResampledShards(self.urls, seed=self.seed, deterministic=True,
                                         worker_seed=lambda: rank * 1000 + worker)
            shards.epoch = self._epoch_id() - 1  # its __iter__ adds one
            stages = [shards]
        else:
            stages = [wds.SimpleShardList(self.urls), self._split_by_node, wds.split_by_worker, self._epoch_shards]
        stages += [self._samples, self._shuffle, self._decode]
        pipeline = wds.DataPipeline(*stages)
        if self.resampled:
            pipeline = pipeline.with_epoch(self._worker_sample_counts()[0])
        return iter(pipeline)


def tune_worker_malloc(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: keep large allocations in the worker's heap.

    Every sample allocates and frees a few MB of image arrays; above 128 KiB glibc serves each with a fresh mmap
    that the kernel zeroes and faults in again (~2.5 ms of a 23 ms 512² sample here, BENCHMARKS.md). Raising the
    mmap and trim thresholds (to glibc's 32 MiB maximum) lets freed arrays be reused. Workers only: the training
    process keeps glibc's defaults. A no-op where glibc is absent.
    """
    del worker_id
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


class _EpochLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch before workers start (non-persistent workers copy it).

    ``position_fn`` (the ShardDataModule's, when a Trainer drives the loader) returns ``(epoch, batches already
    done, restarting)``: the epoch follows the trainer's, and the first iteration after a checkpoint restore
    continues where the run stopped — the next epoch when the saved epoch was finished, else the same epoch with its
    finished batches skipped (exact epochs: the same batches are read and dropped, so the resumed run sees exactly
    the batches the uninterrupted one would; resampled streams: a fresh stream for the rest of that epoch, since a
    resampled epoch is a random draw anyway). Without it the loader counts its own iterations from 0."""

    def __init__(self, *args, position_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._epochs, self._position_fn = 0, position_fn

    def __iter__(self):
        epoch, skip, salt = self._epochs, 0, 0
        if self._position_fn is not None and (pos := self._position_fn()) is not None:
            epoch, done, restarting = pos
            if restarting and done:
                if done >= len(self):
                    epoch += 1  # the checkpoint closed its epoch
                elif self.dataset.resampled:
                    salt = 1
                else:
                    skip = done
        self.dataset.set_epoch(epoch, salt)
        self._epochs = epoch + 1
        it = super().__iter__()
        if skip:
            log.info("resuming epoch %d after %d finished batches: reading and skipping them", epoch, skip)
            for _ in itertools.islice(it, skip):
                pass
        return it

    # Lightning checks for these to know the loader resumes itself (it does, from the trainer's progress above)
    def state_dict(self) -> dict:
        return {"next_epoch": self._epochs}

    def load_state_dict(self, state: dict) -> None:
        pass  # the position comes from the restored fit loop (position_fn), which also knows the finished batches


class ShardDataModule(L.LightningDataModule):
    """LightningDataModule over shard format v1; every argument can be set from a LightningCLI ``data:`` block."""

    hparams: AttributeDict  # what save_hyperparameters stores (Lightning's annotation widens it to a mapping)

    def __init__(self, train_shards: Union[str, list[str]], val_shards: Optional[Union[str, list[str]]] = None,
                 batch_size: int = 8, num_workers: int = 4, shuffle_buffer: int = 64, resampled: bool = True,
                 samples_per_epoch: Optional[int] = None, seed: int = 0, num_target_views: int = 4,
                 input_view: Union[str, int] = "source", include_input_in_targets: bool = False,
                 input_size: int = 512, target_size: int = 512, target_crop_size: int = 0,
                 background: str = "white", val_background: str = "white", pin_memory: bool = False,
                 persistent_workers: bool = False, finalize_on: str = "auto"):
        super().__init__()
        self.save_hyperparameters()
        if finalize_on not in ("auto", "device", "workers"):
            raise ValueError(f"finalize_on {finalize_on!r}: expected 'device' (composite + float conversion after "
                             "the batch reaches the accelerator), 'workers' (in the DataLoader workers) or 'auto'")
        if resampled and not samples_per_epoch:
            raise ValueError("resampled=True needs samples_per_epoch (the number of samples that make an epoch); "
                             "or set resampled=False for exact epochs over the shards")
        view_args: dict[str, Any] = dict(num_target_views=num_target_views, input_view=input_view,
                                         include_input_in_targets=include_input_in_targets, input_size=input_size,
                                         target_size=target_size, target_crop_size=target_crop_size)
        self.train_sampler = ViewSampler(background=background, **view_args)
        self.val_sampler = ViewSampler(background=val_background, **view_args)
        self.error_counts = torch.zeros(MAX_WORKERS + 1, len(KINDS), dtype=torch.int64).share_memory_()
        self.train_dataset: Optional[ShardDataset] = None
        self.val_dataset: Optional[ShardDataset] = None

    @property
    def input_settings(self) -> dict:
        """How the model's input views are prepared, in ``datamodules.images.ImageDataModule``'s terms: the source
        view at ``input_size`` as rendered (no re-framing: ``foreground_ratio`` 0) over ``background``. The systems
        record it in their checkpoints; ``lift3d predict`` prepares images the same way unless told otherwise."""
        hp = self.hparams
        settings: dict[str, Any] = {"input_size": int(hp.input_size), "foreground_ratio": 0.0}
        if hp.background in ("white", "black"):
            settings["background"] = hp.background
        return settings

    @property
    def errors(self) -> dict[str, int]:
        """Skipped-data counts by kind (main process + workers), e.g. ``{"bad_png": 2, "shard_read": 1}``."""
        totals = self.error_counts.sum(dim=0).tolist()
        return {k: int(n) for k, n in zip(KINDS, totals) if n}

    def _dataset(self, spec, sampler, train: bool) -> ShardDataset:
        hp = self.hparams
        urls, counts = resolve_shards(spec)
        in_workers = hp.finalize_on == "workers" or (hp.finalize_on == "auto" and not torch.cuda.is_available())
        ds = ShardDataset(urls, sampler, counts, resampled=hp.resampled and train, finalize=in_workers,
                          samples_per_epoch=hp.samples_per_epoch, shuffle_buffer=hp.shuffle_buffer if train else 0,
                          seed=hp.seed, num_workers=hp.num_workers, batch_size=hp.batch_size, fixed_views=not train,
                          error_counts=self.error_counts)
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        if not ds.resampled and world > 1 and all(u in counts for u in urls):
            per_rank = {sum(counts[u] for u in urls[r::world]) for r in range(world)}
            if len(per_rank) > 1 and rank == 0:
                log.warning("exact epochs over %d ranks: ranks hold %s samples; DDP ranks will yield different "
                            "numbers of batches. Use resampled=True for multi-GPU training.", world, sorted(per_rank))
        return ds

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(hp.train_shards, self.train_sampler, train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None and hp.val_shards:
            self.val_dataset = self._dataset(hp.val_shards, self.val_sampler, train=False)

    def _position(self) -> Optional[tuple[int, int, bool]]:
        """(epoch, batches finished in it, restarting from a checkpoint) of the trainer's fit loop, if fitting."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != "fit":
            return None
        loop = trainer.fit_loop
        # a checkpoint written in on_train_batch_end counts its batch as processed, not yet completed; one written
        # after its epoch completed (at the end of a fit: last.ckpt) has no epoch in progress, and trainer.current_epoch
        # already counts the finished one (the batch count left over from it is stale)
        epoch = loop.epoch_progress.current
        done = loop.epoch_loop.batch_progress.current.processed if epoch.started > epoch.completed else 0
        return int(trainer.current_epoch), int(done), bool(loop.restarting)

    def _loader(self, ds: ShardDataset, train: bool) -> DataLoader:
        hp = self.hparams
        rank, world, _, _ = wds.utils.pytorch_worker_info()  # the main process, after DDP initialisation
        ds.rank_world = (rank, world)
        return _EpochLoader(ds, batch_size=hp.batch_size, num_workers=hp.num_workers, pin_memory=hp.pin_memory,
                            worker_init_fn=tune_worker_malloc, collate_fn=collate,
                            position_fn=self._position if train else None,
                            persistent_workers=hp.persistent_workers and hp.num_workers > 0)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Lightning hands every batch here once it is on the device: integer images → the float training dict
        (``datamodules.views.finalize``), so float32 images are made on the accelerator. With ``finalize_on``
        'workers' (the 'auto' choice without CUDA) the workers already did it and this returns the batch as is."""
        return finalize(batch)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None  # setup("fit") builds it or raises
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> Union[DataLoader, list]:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.state.fn == "fit":
                return []  # fitting without validation data: Lightning skips the validation loop
            raise ValueError("val_dataloader() was asked for but val_shards is not set in the data config")
        return self._loader(self.val_dataset, train=False)
