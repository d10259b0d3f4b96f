import logging
import os
import tarfile

import pytest
import torch

from datamodules.shard_datamodule import ShardDataModule, ShardDataset, resolve_shards
from datamodules.views import ViewSampler, finalize
from render_farm.shards import KINDS
from tests.unit.datamodules.conftest import write_shards

SMALL = dict(num_target_views=2, input_size=32, target_size=32)


def _dm(shards, **kw):
    args = dict(batch_size=3, num_workers=0, shuffle_buffer=0, resampled=False, **SMALL)
    args.update(kw)
    return ShardDataModule(train_shards=str(shards), **args)


def _keys(loader):
    return [k for batch in loader for k in batch["key"]]


def test_resolve_shards_accepts_directory_glob_brace_and_list(shard_dir):
    out, keys = shard_dir
    urls, counts = resolve_shards(str(out))
    assert [os.path.basename(u) for u in urls] == [f"00000-00000{i}.tar" for i in range(3)]
    assert sum(counts.values()) == len(keys)
    assert resolve_shards(str(out / "*.tar"))[0] == urls
    assert resolve_shards(str(out / "00000-00000{0..2}.tar")) == (urls, counts)
    assert resolve_shards([urls[0], str(out / "00000-00000{1..2}.tar")])[0] == urls
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        resolve_shards(str(out / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError, match="lift3d-render"):
        resolve_shards(str(out / "_logs"))


def test_exact_epoch_yields_every_sample_once_with_index_length(shard_dir):
    out, keys = shard_dir
    dm = _dm(out)
    loader = dm.train_dataloader()
    assert len(loader) == 4  # 12 samples / batch 3, from index.json
    batch = finalize(next(iter(loader)))
    assert batch["input_image"].shape == (3, 3, 32, 32) and batch["target_depths"].shape == (3, 2, 1, 32, 32)
    assert batch["target_K"].shape == (3, 2, 3, 3) and batch["input_view"].tolist() == [0, 0, 0]
    assert sorted(_keys(loader)) == keys
    assert dm.errors == {}


def test_truncated_shard_and_corrupt_png_are_reported_skipped_and_counted(tmp_path, caplog):
    out = tmp_path / "bad"
    keys = write_shards(out, n_shards=3, per_shard=4, corrupt={"obj001": {"000.rgba.png": b"\x89PNG\r\n\x1a\n junk"}})
    victim = out / "00000-000002.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.6)])  # cut mid-member: a torn copy
    dm = _dm(out)
    with caplog.at_level(logging.WARNING, logger="datamodules.shard_datamodule"):
        got = _keys(dm.train_dataloader())
    assert "obj001" not in got
    assert set(keys[:8]) - {"obj001"} <= set(got)  # every good sample of the good shards still arrives
    assert len(got) == len(set(got)) and set(got) <= set(keys[8:]) | set(keys[:8])
    errors = dm.errors
    assert errors["bad_png"] == 1
    assert errors["truncated_shard"] == 1 and errors.get("shard_read", 0) + errors.get("missing_member", 0) >= 1
    text = caplog.text
    assert "shard=" + str(out / "00000-000000.tar") in text and "key=obj001 member=000.rgba.png" in text
    assert str(victim) in text


@pytest.mark.parametrize("cut", [0.3, 0.45, 0.77, "boundary"])
def test_every_truncation_point_is_reported(tmp_path, cut):
    out = tmp_path / "t"
    keys = write_shards(out, n_shards=1, per_shard=4, n_views=4, size=32)
    shard = out / "00000-000000.tar"
    data = shard.read_bytes()
    if cut == "boundary":  # exactly between two samples: the stream reader alone would not notice
        with tarfile.open(shard) as tar:
            cut = next(m.offset for m in tar if m.name.startswith(keys[2])) / len(data)
    shard.write_bytes(data[: int(len(data) * cut)])
    dm = _dm(out)
    got = _keys(dm.train_dataloader())
    assert set(got) < set(keys)
    assert dm.errors["truncated_shard"] == 1


def test_unreadable_shard_file_is_skipped(tmp_path):
    out = tmp_path / "s"
    keys = write_shards(out, n_shards=2, per_shard=2)
    (out / "00000-000001.tar").write_bytes(b"this is not a tar archive at all" * 40)
    dm = _dm(out)
    assert sorted(_keys(dm.train_dataloader())) == keys[:2]
    assert dm.errors.get("shard_read", 0) >= 1


def test_split_by_node_and_worker_is_disjoint_and_covers_everything(tmp_path, monkeypatch):
    out = tmp_path / "many"
    keys = write_shards(out, n_shards=7, per_shard=2, n_views=4, size=16)
    urls, counts = resolve_shards(str(out))
    seen = []
    for rank in range(2):
        for worker in range(3):
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "3")
            ds = ShardDataset(urls, ViewSampler(**SMALL), counts, num_workers=3)
            ds.rank_world = (rank, 2)
            seen.append([s["key"] for s in ds])
    flat = [k for part in seen for k in part]
    assert sorted(flat) == keys  # disjoint (no duplicates) and complete
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    lengths = []
    for rank in range(2):
        ds = ShardDataset(urls, ViewSampler(**SMALL), counts, num_workers=3)
        ds.rank_world = (rank, 2)
        lengths.append(len(ds))
    assert lengths == [8, 6]  # rank 0: shards 0,2,4,6; rank 1: shards 1,3,5 — two samples each


def test_two_workers_cover_the_epoch_and_aggregate_errors(tmp_path):
    out = tmp_path / "w"
    keys = write_shards(out, n_shards=4, per_shard=3, corrupt={"obj007": {"meta.json": b"{"}})
    dm = _dm(out, num_workers=2, batch_size=2)
    loader = dm.train_dataloader()
    for epoch in range(2):
        got = _keys(loader)
        assert sorted(got) == [k for k in keys if k != "obj007"]
    assert dm.errors == {"bad_meta": 2}  # once per epoch, counted inside a worker process
    assert int(dm.error_counts[0].sum()) == 0  # nothing in the main process's row


def test_resampled_streaming_epochs(tmp_path):
    out = tmp_path / "r"
    keys = write_shards(out, n_shards=2, per_shard=3)
    dm = _dm(out, resampled=True, samples_per_epoch=10, batch_size=4, shuffle_buffer=4, num_workers=2)
    loader = dm.train_dataloader()
    assert len(loader) == 4  # 5 per worker → batches of 4 + 1 in each worker
    first, second = _keys(loader), _keys(loader)
    assert len(first) == len(second) == 10 and set(first) <= set(keys)
    assert first != second  # a new draw each epoch


def test_view_options_reach_the_batches(shard_dir):
    out, _ = shard_dir
    dm = _dm(out, input_view="random", num_target_views=3, target_size=48, target_crop_size=24,
             include_input_in_targets=True, background="black")
    batch = finalize(next(iter(dm.train_dataloader())))
    assert batch["target_images"].shape == (3, 3, 3, 24, 24)
    assert batch["input_image"][:, :, 0, 0].abs().sum() == 0  # black background in a transparent corner
    assert torch.all(batch["target_views"] < 6)


def test_val_loader_is_deterministic_and_options_are_checked(shard_dir):
    out, _ = shard_dir
    dm = _dm(out, val_shards=str(out), input_view="random", shuffle_buffer=8)
    dm.setup("fit")
    a = [b["input_view"].tolist() for b in dm.val_dataloader()]
    b = [b["input_view"].tolist() for b in dm.val_dataloader()]
    assert a == b
    with pytest.raises(ValueError, match="samples_per_epoch"):
        ShardDataModule(train_shards=str(out), resampled=True)
    with pytest.raises(ValueError, match="val_shards is not set"):
        _dm(out).val_dataloader()


def test_error_kinds_are_stable():
    assert KINDS[0] == "shard_read" and len(set(KINDS)) == len(KINDS)


@pytest.mark.parametrize("finalize_on", ["device", "workers"])
def test_a_lightning_step_receives_the_float_batch(shard_dir, finalize_on):
    """Either way (on_after_batch_transfer inside a real Trainer, or in the workers) steps see float images."""
    import lightning as L

    seen = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            seen.append({k: (v.dtype, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor)})
            return (batch["target_images"].mean() - self.w) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _dm(shard_dir[0], finalize_on=finalize_on, num_workers=1)
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(Probe(), datamodule=dm)
    assert len(seen) == 2
    assert seen[0]["target_images"][0] == torch.float32 and seen[0]["input_image"][0] == torch.float32
    assert seen[0]["target_depths"][0] == torch.float32 and "target_bgra" not in seen[0]
