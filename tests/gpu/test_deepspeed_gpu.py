"""GPU checks of DeepSpeed through Lightning (skipped without CUDA): a real ZeRO-2 (and ZeRO-3 + CPU offload) bf16
fit of lrm_small for a few steps on synthetic batches, its checkpoint directory converted by
``lift3d convert-checkpoint`` and loaded into a plain ``LRMModule`` whose weights equal the engine's fp32 weights,
and a forward of that module."""


import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", ["zero2", "zero3_offload"])
def test_deepspeed_fit_of_lrm_small_converts_to_a_plain_module(name, tmp_path):
    import deepspeed
    import lightning as L
    from torch.utils.data import DataLoader

    from lightning_modules.launch.deepspeed import DeepSpeedStrategy, convert_main, is_zero_checkpoint
    from lightning_modules.lrm import LRMModule
    from lightning_modules.synthetic import build_lrm, lrm_batch

    class SaveAtTrainEnd(L.Callback):
        """The engine's fp32 weights (gathered from the ZeRO partitions) and a checkpoint, before teardown."""

        def on_train_end(self, trainer, pl_module):
            self.fp32 = {n: deepspeed.utils.safe_get_full_fp32_param(p).float().cpu()
                         for n, p in pl_module.named_parameters()}
            trainer.save_checkpoint(str(tmp_path / "last.ckpt"))

    torch.manual_seed(0)
    # activation checkpointing is the model's own
    module = build_lrm("small", grad_ckpt=True, deferred=True, device=torch.device("cpu"))
    batch = lrm_batch(module, 2, 3, 32, torch.device("cpu"))
    samples = [{k: v[i] for k, v in batch.items()} for i in range(2)] * 4
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    save = SaveAtTrainEnd()
    trainer = L.Trainer(accelerator="gpu", devices=1, strategy=DeepSpeedStrategy(f"configs/deepspeed/{name}.json"),
                        precision="bf16-mixed", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, gradient_clip_val=1.0, callbacks=[save],
                        default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(samples, batch_size=2))
    assert trainer.strategy.config["train_micro_batch_size_per_gpu"] == 2
    assert trainer.strategy.config["zero_optimization"]["stage"] == (3 if name == "zero3_offload" else 2)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(before[k], save.fp32["net." + k]) for k in before if "net." + k in save.fp32)

    assert is_zero_checkpoint(tmp_path / "last.ckpt")
    out = convert_main([str(tmp_path / "last.ckpt"), str(tmp_path / "last-fp32.ckpt")])
    model = LRMModule.load_from_checkpoint(out, map_location="cpu")
    assert type(model) is LRMModule
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), save.fp32[n], rtol=0, atol=0, msg=n)
    model = model.cuda().eval()
    one = {k: v[:1].cuda() for k, v in batch.items()}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        planes, _, _ = model.reconstruct(one)
    assert torch.isfinite(planes).all()
