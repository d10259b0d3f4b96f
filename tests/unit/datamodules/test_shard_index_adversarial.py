"""Issue 14: the loader never trains on less than the directory holds without a word. A shard on disk that its
``index.json`` does not list (a copy that missed the index update, a second farm run's index overwritten), a listed
shard that is gone, and a corrupt index each stop the loader with the file, the shards and the rebuild command."""

from __future__ import annotations

import os

import pytest

from datamodules.shard_datamodule import ShardDataModule
from render_farm.shards import ShardIndexError, update_index
from tests.unit.datamodules.conftest import write_shards

SMALL: dict = dict(batch_size=3, num_workers=0, shuffle_buffer=0, resampled=False, num_target_views=2, input_size=32,
             target_size=32)


def _keys(out) -> list[str]:
    dm = ShardDataModule(train_shards=str(out), **SMALL)
    return sorted(k for batch in dm.train_dataloader() for k in batch["key"])


def test_shard_missing_from_the_index_is_an_error_naming_it(tmp_path):
    out = tmp_path / "shards"
    keys = write_shards(out, n_shards=3, per_shard=2)
    update_index(str(out), rebuild=True)
    index = (out / "index.json").read_text()
    os.rename(out / "00000-000002.tar", out / "00000-000002.tar.away")
    update_index(str(out), rebuild=True)
    os.rename(out / "00000-000002.tar.away", out / "00000-000002.tar")  # back on disk, not in the index
    with pytest.raises(ShardIndexError, match=r"1 shard\(s\) are not in it \(00000-000002.tar\).*lift3d-render index"):
        _keys(out)
    (out / "index.json").write_text(index)
    os.remove(out / "00000-000001.tar")
    with pytest.raises(ShardIndexError, match=r"listed but missing \(00000-000001.tar\)"):
        _keys(out)
    update_index(str(out), rebuild=True)
    assert _keys(out) == keys[:2] + keys[4:]


def test_corrupt_index_is_named_by_the_loader(tmp_path):
    out = tmp_path / "shards"
    write_shards(out, n_shards=1, per_shard=2)
    (out / "index.json").write_bytes(b"\x00\x00\x00")
    with pytest.raises(ShardIndexError, match=rf"{out}/index.json is not valid JSON.*lift3d-render index --out {out}"):
        _keys(out)
