"""One PSNR: what training logs as ``val/psnr`` and what ``lift3d evaluate`` reports agree on the same views.

Two held-out objects whose views the tiny random LRM renders with clearly different errors (so the PSNR of the
batch-pooled MSE, the old training number, would differ from the mean of per-image PSNRs by a few hundredths of a dB):
the validation step of a Trainer sees them as one batch; the evaluation reads the same objects from their shard,
scores them one by one and summarises. Both give the mean over the images of the per-image PSNR.
"""

import lightning as L
import pytest
import torch

from lightning_modules.evaluation.cli import parser
from lightning_modules.evaluation.reconstruction import LRMReconstructor, held_out_batch, list_objects
from lightning_modules.evaluation.report import summarise
from lightning_modules.evaluation.scoring import ObjectEvaluator
from lightning_modules.lrm import LRMModule
from render_farm.shards import ShardWriter, encode_sample
from tests.unit.datamodules.conftest import make_object
from tests.unit.lightning_modules.conftest import tiny_lrm_args

SIZE = 32


def write_objects(out_dir) -> None:
    """``plain``: the datamodule tests' synthetic object (small squares on white once composited); ``varied``: the
    same cameras, its held-out views alternately all black and empty (white), so its views' errors differ from each
    other and from plain's."""
    with ShardWriter(str(out_dir), maxcount=8) as writer:
        for key in ("plain", "varied"):
            views, c2w, K, hw, meta = make_object(key, n_views=6, size=SIZE)
            if key == "varied":
                for i, view in enumerate(views[1:], start=1):
                    view["rgba"][:] = (0, 0, 0, 255) if i % 2 else (0, 0, 0, 0)
            writer.write(encode_sample(key, views, c2w, K, hw, meta))


def one_batch(batches: list[dict]) -> dict:
    """The objects' held-out batches (B = 1 each, as many views each) as one batch of B objects."""
    return {k: torch.cat([b[k] for b in batches]) if torch.is_tensor(batches[0][k]) else
            [x for b in batches for x in b[k]] for k in batches[0]}


def test_training_val_psnr_and_evaluation_psnr_agree_on_one_batch(tmp_path):
    write_objects(tmp_path / "shards")
    samples, damage = list_objects(str(tmp_path / "shards"))
    assert [s.key for s in samples] == ["plain", "varied"] and not damage

    torch.manual_seed(0)
    module = LRMModule(**tiny_lrm_args(), lpips_weight=0.0)
    size = int(module.net.encoder.img_size)
    batch = one_batch([held_out_batch(s, "auto", size, 0, "white", torch.device("cpu"))[0] for s in samples])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, torch.utils.data.DataLoader([batch], batch_size=None), verbose=False)[0]
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")

    args = parser().parse_args(["--ckpt", str(tmp_path / "tiny.ckpt"), "--shards", str(tmp_path / "shards"),
                                "--num-points", "500", "--align", "none"])
    model = LRMReconstructor(args.ckpt, torch.device("cpu"), mesh_resolution=16, mesh_level="auto")
    evaluator = ObjectEvaluator(model, args, str(tmp_path / "evaluation"), {})
    records = [evaluator(s)[0] for s in samples]
    assert all(r["held_out_views"] == 5 for r in records)
    assert abs(records[0]["psnr"] - records[1]["psnr"]) > 1.0  # pooling would not give the per-image mean here
    evaluated = summarise(records, [], seconds=1.0)["overall"]["psnr"]["mean"]
    assert logged["val/psnr"] == pytest.approx(evaluated, abs=1e-3)
