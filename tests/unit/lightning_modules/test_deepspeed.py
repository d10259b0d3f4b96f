"""DeepSpeed on CPU, as far as DeepSpeed and Lightning allow: the JSON configs, the trainer fragments, the strategy's
path resolution, the config Lightning hands DeepSpeed, and real ZeRO-2 and ZeRO-3 + CPU-offload checkpoints (2 ranks
over gloo) converted by ``lift3d convert-checkpoint`` into a file that a plain ``LRMModule`` and ``lift3d predict``
load. A Lightning DeepSpeed *fit* needs CUDA (``DeepSpeedStrategy.setup_environment`` refuses any other
accelerator): tests/gpu/test_deepspeed_gpu.py."""

import json
import os
import socket
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import yaml

from configs import ROOT
from lightning_modules.launch.deepspeed import (
    DeepSpeedStrategy,
    convert_checkpoint,
    convert_main,
    is_zero_checkpoint,
    load_deepspeed_config,
    resolve_config_path,
)
from tests.unit.lightning_modules.conftest import field_median, tiny_lrm_args

JSONS = {"zero2": 2, "zero3_offload": 3}
FRAGMENTS = {"deepspeed_zero2.yaml": "zero2", "deepspeed_zero3_offload.yaml": "zero3_offload"}


def parse(args):
    """The `lift3d` parser without building the classes (as tests/unit/test_configs.py does)."""
    from lightning_modules.launch.cli import Lift3dCLI

    class ParseOnly(Lift3dCLI):
        def instantiate_classes(self) -> None:
            pass

    return ParseOnly(run=False, args=args).config


# --- the config files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(JSONS))
def test_deepspeed_jsons_parse_and_validate_with_deepspeed(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((ROOT / "configs" / "deepspeed" / f"{name}.json").read_text())
    # what the Trainer owns is left to Lightning (it refuses gradient_accumulation_steps, and prefers the JSON's
    # micro batch size and clipping over the Trainer's when the JSON sets them)
    assert not {"gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "train_batch_size",
                "gradient_clipping"} & set(raw)
    # activation checkpointing is the LRM's own switch, not DeepSpeed's section
    assert "activation_checkpointing" not in raw
    # bf16 compute through torch.autocast over fp32 parameters: DeepSpeed's "bf16" mode would cast the LRM's
    # parameters to bf16, which its fp32 camera path cannot take (test_bf16_parameters_are_not_what_the_lrm_takes)
    assert raw["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and raw["bf16"] == {"enabled": False}
    # DeepSpeed's own parser (pydantic: unknown ZeRO keys are errors), with what Lightning adds from a Trainer
    ds = DeepSpeedConfig(dict(load_deepspeed_config(f"configs/deepspeed/{name}.json"),
                              train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=1, gradient_clipping=1.0))
    assert ds.zero_optimization_stage == JSONS[name]
    assert ds.torch_autocast_enabled and ds.torch_autocast_dtype == torch.bfloat16
    offload = name.endswith("offload")
    assert (ds.zero_config.offload_optimizer is not None) == offload
    assert (ds.zero_config.offload_param is not None) == offload
    if offload:
        assert ds.zero_config.offload_optimizer.device == "cpu" and ds.zero_config.offload_param.device == "cpu"
        assert ds.zero_force_ds_cpu_optimizer is False  # the LRM's torch AdamW steps on the CPU


@pytest.mark.parametrize("fragment", sorted(FRAGMENTS))
def test_trainer_fragments_apply_on_top_of_an_experiment(fragment):
    """`--trainer FRAGMENT` after `--config EXPERIMENT` replaces the strategy and precision and keeps the rest."""
    cfg = parse(["--config", str(ROOT / "configs" / "experiments" / "lrm_small.yaml"),
                 "--trainer", str(ROOT / "configs" / "trainer" / fragment)])
    assert cfg.trainer.strategy.class_path == "lightning_modules.launch.deepspeed.DeepSpeedStrategy"
    assert cfg.trainer.strategy.init_args.config == f"configs/deepspeed/{FRAGMENTS[fragment]}.json"
    assert cfg.trainer.precision == "bf16-mixed"
    assert (cfg.trainer.devices, cfg.trainer.gradient_clip_val, cfg.trainer.max_epochs) == (1, 1.0, 20)
    assert cfg.model.init_args.transformer["layers"] == 12
    frag = yaml.safe_load((ROOT / "configs" / "trainer" / fragment).read_text())
    assert set(frag) == {"strategy", "precision"}


def test_paper_experiment_runs_zero2_and_the_offload_fragment_overrides_it():
    paper = str(ROOT / "configs" / "experiments" / "lrm_paper.yaml")
    cfg = parse(["--config", paper])
    assert cfg.trainer.strategy.class_path == "lightning_modules.launch.deepspeed.DeepSpeedStrategy"
    assert cfg.trainer.strategy.init_args.config == "configs/deepspeed/zero2.json"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 1.0
    cfg = parse(["--config", paper, "--trainer", str(ROOT / "configs" / "trainer" / "deepspeed_zero3_offload.yaml"),
                 "--model.init_args.transformer.grad_checkpointing=true"])
    assert cfg.trainer.strategy.init_args.config == "configs/deepspeed/zero3_offload.json"
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (16, 8)
    assert cfg.model.init_args.transformer["grad_checkpointing"] in (True, "true")


# --- the strategy's config argument ----------------------------------------------------------------------------
def test_strategy_resolves_a_repo_relative_path_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    strategy = DeepSpeedStrategy("configs/deepspeed/zero3_offload.json")
    assert strategy.config_path == ROOT / "configs" / "deepspeed" / "zero3_offload.json"
    assert strategy.zero_stage_3 and strategy.config["zero_optimization"]["offload_param"]["device"] == "cpu"
    # a path that exists as given wins over the repository's
    (tmp_path / "mine.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert DeepSpeedStrategy("mine.json").config["zero_optimization"]["stage"] == 1
    assert DeepSpeedStrategy({"zero_optimization": {"stage": 2}}).config_path is None


def test_missing_or_bad_json_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"configs/deepspeed/zero9\.json.*not found.*configs/deepspeed/zero2"):
        DeepSpeedStrategy("configs/deepspeed/zero9.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ValueError, match=rf"{bad}.*not valid JSON.*fix the file"):
        DeepSpeedStrategy(str(bad))
    bad.write_text('{"gradient_accumulation_steps": 4}')
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps.*accumulate_grad_batches"):
        DeepSpeedStrategy(str(bad))
    bad.write_text('[1, 2]')
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_deepspeed_config(bad)
    assert resolve_config_path(ROOT / "configs" / "deepspeed" / "zero2.json").is_file()


# --- what Lightning hands DeepSpeed ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(JSONS))
def test_lightning_fills_the_config_from_the_trainer(name):
    """Lightning's real Trainer, accelerator connector, data connector and ``_init_config_if_needed`` (the first
    thing ``DeepSpeedStrategy.setup`` does) on CPU. Where Lightning stops on CPU: ``Trainer.fit`` calls
    ``setup_environment`` first, which refuses a non-CUDA accelerator; the rest of a fit is the GPU test's."""
    import lightning as L
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision
    from torch.utils.data import DataLoader

    from lightning_modules.lrm import LRMModule

    strategy = DeepSpeedStrategy(f"configs/deepspeed/{name}.json")
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, precision="bf16-mixed", gradient_clip_val=0.5,
                        accumulate_grad_batches=3, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    assert trainer.strategy is strategy and isinstance(trainer.precision_plugin, DeepSpeedPrecision)
    module = LRMModule(**tiny_lrm_args(), lpips_weight=0.0)
    strategy.connect(module)
    module.trainer = trainer
    trainer._data_connector.attach_data(module, train_dataloaders=DataLoader(list(range(20)), batch_size=5))
    strategy._init_config_if_needed()
    cfg = strategy.config
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_clipping"], cfg["gradient_accumulation_steps"]) \
        == (5, 0.5, 3)
    assert cfg["zero_optimization"]["stage"] == JSONS[name]
    assert cfg["bf16"] == {"enabled": False} and cfg["torch_autocast"]["dtype"] == "bfloat16"  # Lightning kept them
    assert ("offload_optimizer" in cfg["zero_optimization"]) == name.endswith("offload")
    with pytest.raises(RuntimeError, match="only supported on CUDA"):
        trainer.fit(module, DataLoader([0]))


def test_bf16_parameters_are_not_what_the_lrm_takes():
    """Why the JSONs use torch_autocast, not DeepSpeed's "bf16" section: that section casts the module's parameters
    to bf16 (DeepSpeedEngine calls ``module.bfloat16()``), and the LRM's camera path feeds fp32 into them."""
    from lightning_modules.lrm import LRMModule
    from lightning_modules.synthetic import lrm_batch

    module = LRMModule(**tiny_lrm_args(), lpips_weight=0.0)
    batch = {k: v.bfloat16() for k, v in lrm_batch(module, 1, 1, 8, torch.device("cpu")).items()}
    with pytest.raises(RuntimeError, match="same dtype"):
        module.bfloat16().reconstruct(batch)


# --- real ZeRO checkpoints and their conversion ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zero_rank(rank: int, world: int, port: int, workdir: str, name: str) -> None:
    """One rank of a ZeRO training step and checkpoint save (``name``: zero2 or zero3_offload, the real JSON through
    its trainer fragment), through Lightning's own DeepSpeedStrategy code where it runs on CPU: its distributed
    init, config formatting, optimizer set-up, ``deepspeed.initialize`` call, and ``Trainer.save_checkpoint``
    (dump_checkpoint + ``DeepSpeedStrategy.save_checkpoint``). The training step is what Lightning's loop does around
    the module (inputs through the precision plugin, the forward inside the engine, ``engine.backward``,
    ``engine.step``)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0",
                      WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    import deepspeed
    import deepspeed.ops
    from torch.utils.data import DataLoader

    from lightning_modules.launch.cli import Lift3dCLI
    from lightning_modules.synthetic import lrm_batch

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel on its first init (~40 s); without it
    # DeepSpeed does the same collectives through gloo, as it does on platforms without the kernel
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # the module, trainer and strategy as `lift3d`'s CLI builds them from the trainer fragment (the seed gives both
    # ranks the same weights); the fragment's relative JSON path resolves from the repository root
    cli = Lift3dCLI(run=False, args=[
                           "--seed_everything=0", "--model", str(ROOT / "configs" / "model" / "lrm_tiny.yaml"),
                           "--model.init_args.lpips_weight=0", "--model.init_args.total_steps=20",
                           "--model.init_args.warmup_steps=2", "--data", str(ROOT / "configs" / "data" / "tiny.yaml"),
                           "--trainer", str(ROOT / "configs" / "trainer" / f"deepspeed_{name}.yaml"),
                           "--trainer.accelerator=cpu", f"--trainer.devices={world}", "--trainer.gradient_clip_val=1.0",
                           "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                           f"--trainer.default_root_dir={workdir}"])
    module, trainer, strategy = cli.model, cli.trainer, cli.trainer.strategy
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config_path == ROOT / "configs" / "deepspeed" / f"{name}.json"
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    # Lightning hands DeepSpeed ``device_rank=root_device.index``, which is None for a plain ``cpu`` device and
    # DeepSpeed compares it with 0: indexed CPU devices get Lightning's own call through on CPU
    strategy.parallel_devices = [torch.device("cpu", i) for i in range(world)]
    strategy.set_world_ranks()
    strategy._init_deepspeed_distributed()  # deepspeed.init_distributed over gloo (CPU root device)
    assert torch.distributed.get_world_size() == world and torch.distributed.get_backend() == "gloo"

    batch = lrm_batch(module, 2, 2, 16, torch.device("cpu"))
    batch["input_image"] = batch["input_image"] + 0.1 * rank  # the ranks' data differ: gradients are averaged
    samples = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    strategy.connect(module)
    module.trainer = trainer
    loader: DataLoader = DataLoader(samples, batch_size=2)  # type: ignore[arg-type]  # a list is a map-style dataset
    trainer._data_connector.attach_data(module, train_dataloaders=loader)
    strategy._init_config_if_needed()
    optimizer, scheduler = strategy._init_optimizers()
    assert scheduler is not None  # the LRM configures a scheduler
    engine, ds_optimizer = strategy._setup_model_and_optimizer(module, optimizer, scheduler.scheduler)
    strategy.model, strategy.optimizers, strategy.lr_scheduler_configs = engine, [ds_optimizer], [scheduler]
    engine.lr_scheduler = None  # Lightning steps the scheduler itself (as in _initialize_deepspeed_train)
    stage = JSONS[name]
    assert engine.zero_optimization_stage() == stage
    assert type(ds_optimizer).__name__ == ("DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer")
    assert engine.zero_cpu_offload() == (name == "zero3_offload")

    batch = trainer.precision_plugin.convert_input(batch)  # bf16 inputs, as Lightning's loop hands them over
    # typed as a step's output; forward_views returns (out, planes, scale)
    out, planes, scale = cast(tuple, strategy._forward_redirection(engine, module, "forward_views", batch, True))
    assert planes.dtype == torch.bfloat16, planes.dtype  # the network ran under the engine's torch.autocast
    loss = module.losses(batch, out, planes, scale)["loss"]
    trainer.precision_plugin.backward(loss, module, ds_optimizer)  # engine.backward
    trainer.precision_plugin.optimizer_step(ds_optimizer, module, lambda: loss)  # engine.step (clipping inside)
    scheduler.scheduler.step()  # type: ignore[call-arg]  # the LRM's LambdaLR, not a ReduceLROnPlateau (metrics)
    assert engine.global_steps == 1

    # the fp32 weights gathered from the ranks' partitions (a collective: every rank calls it)
    fp32 = {n: deepspeed.utils.safe_get_full_fp32_param(p).clone() for n, p in module.named_parameters()}
    trainer.save_checkpoint(os.path.join(workdir, "epoch=0-step=1.ckpt"))
    if rank == 0:
        buffers = {n: b.clone() for n, b in module.state_dict().items() if n not in fp32}
        torch.save({"params": fp32, "buffers": buffers, "initial": initial}, os.path.join(workdir, "expected.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


_CHECKPOINTS: dict[str, tuple[Path, dict[str, Any]]] = {}


def _checkpoint(name: str, tmp_path_factory):
    """A real ZeRO checkpoint directory of the tiny LRM after one training step on 2 CPU ranks (made once per
    module), and the engine's fp32 weights after that step."""
    import torch.multiprocessing as mp

    if name not in _CHECKPOINTS:
        workdir = tmp_path_factory.mktemp(name)
        mp.spawn(_zero_rank, args=(2, _free_port(), str(workdir), name), nprocs=2, join=True)
        _CHECKPOINTS[name] = (workdir / "epoch=0-step=1.ckpt",
                              torch.load(workdir / "expected.pt", weights_only=False))
    return _CHECKPOINTS[name]


@pytest.fixture(scope="module", params=sorted(JSONS))
def zero_checkpoint(request, tmp_path_factory):
    return (request.param, *_checkpoint(request.param, tmp_path_factory))


@pytest.fixture(scope="module")
def zero2_checkpoint(tmp_path_factory):
    return _checkpoint("zero2", tmp_path_factory)


def test_lightning_writes_a_sharded_checkpoint_directory(zero_checkpoint):
    name, ckpt, _ = zero_checkpoint
    assert is_zero_checkpoint(ckpt)
    assert (ckpt / "latest").read_text().strip() == "checkpoint"  # Lightning's tag
    files = sorted(p.name for p in (ckpt / "checkpoint").iterdir())
    if name == "zero2":  # one model file; one optimizer shard per rank (fp32 weights and Adam states partitioned)
        assert files == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                         "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    else:  # ZeRO-3: the parameters are partitioned too, so each rank writes its own model file
        assert files == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                         "zero_pp_rank_1_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_convert_checkpoint_gives_the_engines_fp32_weights(zero_checkpoint, tmp_path, capsys):
    from lightning_modules.launch.cli import main
    from lightning_modules.lrm import LRMModule

    _, ckpt, expected = zero_checkpoint
    out = tmp_path / "converted" / "last-fp32.ckpt"
    main(["convert-checkpoint", str(ckpt), str(out)])  # `lift3d convert-checkpoint`, in-process
    assert f"wrote {out}" in capsys.readouterr().out
    converted = torch.load(out, weights_only=False)
    state = converted["state_dict"]
    assert set(state) == set(expected["params"]) | set(expected["buffers"])
    for key, value in expected["params"].items():
        assert state[key].dtype == torch.float32
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    for key, value in expected["buffers"].items():
        torch.testing.assert_close(state[key], value.float(), rtol=0, atol=0, msg=key)
    assert converted["hyper_parameters"]["total_steps"] == 20 and "pytorch-lightning_version" in converted
    assert converted["hyper_parameters"]["_class_path"] == "lightning_modules.lrm.LRMModule"  # built by LightningCLI

    model = LRMModule.load_from_checkpoint(out, map_location="cpu")
    assert type(model) is LRMModule and model.lpips is None
    for key, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected["params"][key], rtol=0, atol=0)
    assert any(not torch.equal(p, expected["initial"][k]) for k, p in expected["params"].items())  # it trained
    with torch.no_grad():
        from lightning_modules.synthetic import lrm_batch
        planes, _, _ = model.eval().reconstruct(lrm_batch(model, 1, 1, 8, torch.device("cpu")))
    assert torch.isfinite(planes).all()


def test_convert_checkpoint_refuses_what_is_not_a_zero_checkpoint(zero2_checkpoint, tmp_path, capsys):
    ckpt, _ = zero2_checkpoint
    with pytest.raises(SystemExit) as exc:
        convert_main([str(tmp_path / "nowhere.ckpt"), str(tmp_path / "out.ckpt")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere.ckpt is not a DeepSpeed ZeRO checkpoint" in err and "does not exist" in err
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(ValueError, match="plain.ckpt is not a DeepSpeed ZeRO checkpoint.*a file, not a directory"):
        convert_checkpoint(plain, tmp_path / "out.ckpt")
    empty = tmp_path / "empty.ckpt"
    empty.mkdir()
    (empty / "latest").write_text("checkpoint")
    with pytest.raises(ValueError, match=r"empty.ckpt is not a DeepSpeed ZeRO checkpoint.*mp_rank_00_model_states"):
        convert_checkpoint(empty, tmp_path / "out.ckpt")
    assert not is_zero_checkpoint(empty) and not (tmp_path / "out.ckpt").exists()
    with pytest.raises(ValueError, match="is a directory"):
        convert_checkpoint(ckpt, tmp_path)


def test_lift3d_predict_runs_from_the_converted_checkpoint(zero2_checkpoint, tmp_path):
    """`lift3d predict --ckpt_path CONVERTED` (in-process LightningCLI, the tiny experiment): a mesh per image."""
    import numpy as np
    from PIL import Image

    from lightning_modules.launch.cli import main

    ckpt, _ = zero2_checkpoint
    converted = convert_checkpoint(ckpt, tmp_path / "fp32.ckpt")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 60, 60, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "square.png")
    out = tmp_path / "predictions"
    main(["predict", "--config", str(ROOT / "configs" / "experiments" / "lrm_tiny.yaml"), "--ckpt_path", str(converted),
          "--data=datamodules.images.ImageDataModule", f"--data.images={tmp_path / 'square.png'}",
          "--data.input_size=64", f"--model.init_args.predict_dir={out}", "--model.init_args.mesh_resolution=24",
          f"--model.init_args.mesh_level={field_median(converted, tmp_path / 'square.png')}",
          "--model.init_args.turntable=none",
          "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])
    assert (out / "square.glb").stat().st_size > 100
