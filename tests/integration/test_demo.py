"""`make demo` end to end (smaller images): Blender renders → shards → a datamodule batch → preview."""

import json

import pytest
from PIL import Image

from lightning_modules import demo

pytestmark = pytest.mark.slow


def test_demo_renders_reads_back_and_previews(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["total_samples"] == 3  # three good objects; the truncated file is recorded, not rendered
    assert "recorded failure truncated" in out
    assert "batch['target_images']: (2, 2, 3, 32, 32)" in out  # tiny.yaml: 2 targets, 32² crops
    assert Image.open(tmp_path / "preview.png").size[0] > 0
    # running it again resumes: nothing is rendered twice
    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4"]) == 0
    assert "0 ok, 0 failed, 4 already done" in capsys.readouterr().out
