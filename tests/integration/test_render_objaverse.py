"""lift3d-render objaverse end to end through the real objaverse API, offline, against a hub-shaped cache."""

import json
import os

import pytest
import webdataset as wds

from tests.integration.conftest import render_cli
from tests.unit.render_farm.test_sources import OBJECTS, hub_cache  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_uids_file_with_licence_filter_renders_cached_objects_and_records_the_rest(hub_cache, tmp_path):  # noqa: F811
    cache, _ = hub_cache
    uids = tmp_path / "uids.txt"
    uids.write_text("# objects to render\n" + "\n".join(OBJECTS) + "\n")
    out = tmp_path / "shards"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = render_cli("objaverse", "--uids-file", uids, "--cache-dir", cache, "--licences", "by", "cc0", "by-sa",
                      "--out", out, "--config", "configs/render/tiny.yaml", "--resolution", 32, "--samples", 2,
                      "--no-progress", env=env)
    allowed = {u for u, (lic, _, _, _) in OBJECTS.items() if lic in ("by", "cc0", "by-sa")}
    cached = {u for u in allowed if OBJECTS[u][3]}
    samples = {s["__key__"]: json.loads(s["meta.json"])
               for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)}
    assert set(samples) == cached
    for uid, meta in samples.items():
        assert meta["source"] == "objaverse" and meta["licence"] == OBJECTS[uid][0]
        assert meta["source_metadata"]["name"] == OBJECTS[uid][1]
    failures = [json.loads(line) for line in open(out / "_state" / "task-00000.failures.jsonl")]
    assert {f["key"] for f in failures} == allowed - cached  # listed but not in the cache, and offline
    assert f"{len(cached)} ok, {len(allowed - cached)} failed" in proc.stdout
