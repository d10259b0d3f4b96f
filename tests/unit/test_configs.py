"""Every Lightning YAML in configs/ parses through the `lift3d` LightningCLI parser, and its model blocks build; the
model blocks are typed (options listed, checked and converted when a config is parsed).

(The render configs are parsed by tests/unit/render_farm/test_config.py.)"""

import glob
import os

import pytest
import torch
import yaml

from configs import CONFIG_DIR, DATA_DIR, EXPERIMENT_DIR, MODEL_DIR, TRAINER_DIR, load_model_block
from lightning_modules.launch.cli import Lift3dCLI

EXPERIMENTS = sorted(glob.glob(os.path.join(EXPERIMENT_DIR, "*.yaml")))
MODELS = sorted(glob.glob(os.path.join(MODEL_DIR, "*.yaml")))
DATA = sorted(glob.glob(os.path.join(DATA_DIR, "*.yaml")))
TRAINER = sorted(glob.glob(os.path.join(TRAINER_DIR, "*.yaml")))  # fragments: --trainer FILE over an experiment


class ParseOnly(Lift3dCLI):
    """The `lift3d` CLI's parser, without building the classes (the paper model would want the hub's weights)."""

    def instantiate_classes(self) -> None:
        pass


def parse(args):
    return ParseOnly(run=False, args=args).config


def test_there_are_configs_to_check():
    names = {os.path.basename(p) for p in EXPERIMENTS + MODELS}
    assert {"lrm_paper.yaml", "lrm_small.yaml", "lrm_tiny.yaml", "one2345_paper.yaml", "one2345_tiny.yaml"} <= names


MODEL_OF = {"lrm": ("lightning_modules.lrm.LRMModule", "datamodules.shard_datamodule.ShardDataModule"),
            "one2345": ("lightning_modules.one2345.One2345Module", "datamodules.one2345.One2345DataModule")}


def family(path: str) -> str:
    return os.path.basename(path).split("_")[0]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_experiment_configs_parse(path):
    cfg = parse(["--config", path])
    assert (cfg.model.class_path, cfg.data.class_path) == MODEL_OF[family(path)]
    assert cfg.trainer.gradient_clip_val == 1.0
    if os.path.basename(path) == "lrm_paper.yaml":  # the paper run: 128 GPUs × 8 = 1024
        assert cfg.trainer.num_nodes * cfg.trainer.devices * cfg.data.init_args.batch_size == 1024
        assert cfg.global_batch_size == 1024 and cfg.trainer.num_nodes == 16 and cfg.trainer.devices == 8
        assert cfg.trainer.strategy.init_args.config == "configs/deepspeed/zero2.json"
        assert cfg.trainer.precision == "bf16-mixed"
        assert cfg.model.init_args.lr == 4e-4 and cfg.model.init_args.warmup_steps == 3000
        assert cfg.data.init_args.include_input_in_targets
    if os.path.basename(path) == "one2345_paper.yaml":  # the training recipe
        m = cfg.model.init_args
        assert (m.lr, m.eikonal_weight, m.sparseness_weight, m.mask_weight, m.num_rays) == (2e-4, 0.1, 0.02, 0.1, 512)
        assert m.cost_volume["resolution"] == 96 and m.features["out_channels"] == 56
        assert m.renderer["num_coarse"] == 64 and m.renderer["num_importance"] == 64
        assert cfg.data.init_args.neighbours == "predicted" and cfg.data.init_args.include_gt_sources
        assert cfg.global_batch_size == cfg.trainer.devices * cfg.data.init_args.batch_size == 8
    if cfg.trainer.default_root_dir:  # one run directory: checkpoints and the W&B run are placed under it
        ckpts = [c for c in cfg.trainer.callbacks if c.class_path.endswith("ModelCheckpoint")]
        assert all(c.init_args.dirpath == os.path.join(cfg.trainer.default_root_dir, "checkpoints") for c in ckpts)
        assert cfg.trainer.logger.init_args.save_dir == cfg.trainer.default_root_dir


def build_network(path: str):
    """The network of a model YAML, on the meta device (no memory, no weights)."""
    from lightning_modules.networks.lrm.model import LRM
    from lightning_modules.networks.one2345.model import One2345

    args = load_model_block(path).init_args
    with torch.device("meta"):
        if family(path) == "one2345":
            return One2345(*(args.get(k) for k in ("features", "cost_volume", "sparse_cnn", "sdf", "colour",
                                                   "renderer")))
        return LRM(dict(args["encoder"], pretrained=False, checkpoint_path=None), args.get("transformer"),
                   args.get("field"), args.get("renderer"), args.get("camera_dim", 1024))


@pytest.mark.parametrize("path", MODELS, ids=os.path.basename)
def test_model_configs_build(path):
    """Each model block's options are ones its network takes, and the model + a data config parse together."""
    net = build_network(path)
    assert sum(p.numel() for p in net.parameters()) > 0
    data = [d for d in DATA if ("one2345" in d) == (family(path) == "one2345")][0]
    parse(["--model", path, "--data", data])


@pytest.mark.parametrize("path", TRAINER, ids=os.path.basename)
def test_trainer_fragments_parse_over_an_experiment(path):
    """A trainer fragment applies over an experiment; the files it names (strategy/...) resolve from its directory."""
    fragment = yaml.safe_load(open(path))
    cfg = parse(["--config", os.path.join(EXPERIMENT_DIR, "lrm_small.yaml"), "--trainer", path])
    for key, value in fragment.items():
        parsed = cfg.trainer[key]
        if isinstance(value, str) and value.endswith(".yaml"):  # a nested file: what it holds arrived
            nested = yaml.safe_load(open(os.path.join(os.path.dirname(path), value)))
            assert parsed.class_path == nested["class_path"]
            assert {k: parsed.init_args[k] for k in nested["init_args"]} == nested["init_args"]
        else:
            assert parsed == value, key


def test_every_lightning_yaml_in_configs_is_parsed_here():
    """No config file goes unchecked: each is an experiment, model, data or trainer fragment parsed above, or a file
    one of those names (render settings: tests/unit/render_farm/test_config.py)."""
    named = set()
    for path in EXPERIMENTS + TRAINER:
        for value in _strings(yaml.safe_load(open(path))):
            if value.endswith(".yaml"):
                named.add(os.path.normpath(os.path.join(os.path.dirname(path), value)))
    everything = {p for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
                  if not p.startswith(os.path.join(CONFIG_DIR, "render") + os.sep)}
    assert everything - set(EXPERIMENTS + MODELS + DATA + TRAINER) - named == set()


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("path", DATA, ids=os.path.basename)
def test_data_configs_parse(path):
    cfg = parse(["--model", MODELS[0], "--data", path])
    assert cfg.data.init_args.batch_size >= 1


def test_tiny_experiment_instantiates():
    """The tiny run builds for real (random weights, no files needed): model, data module and trainer."""
    cli = Lift3dCLI(run=False, args=["--config", os.path.join(EXPERIMENT_DIR, "lrm_tiny.yaml"),
                                     "--trainer.logger=false"])
    assert type(cli.model).__name__ == "LRMModule"
    assert cli.model.net.transformer.pos_embed.shape == (3 * 8 * 8, 64)
    assert cli.trainer.max_steps == 400


def test_one2345_tiny_experiment_instantiates():
    """The tiny One-2-3-45 run builds for real: the module with the tiny sizes and the One-2-3-45 data module."""
    cli = Lift3dCLI(run=False, args=["--config", os.path.join(EXPERIMENT_DIR, "one2345_tiny.yaml"),
                                     "--trainer.logger=false"])
    assert type(cli.model).__name__ == "One2345Module" and type(cli.datamodule).__name__ == "One2345DataModule"
    assert cli.model.net.cost_volume.resolution == 32
    assert cli.datamodule.train_sampler.neighbours == "ground_truth"


# --- typed model blocks -------------------------------------------------------------------------------------------
def _blocks(family_name: str) -> dict:
    """The typed blocks of a model family: init_args key → config class."""
    from lightning_modules.networks.lrm import config as lrm
    from lightning_modules.networks.one2345 import config as one2345

    if family_name == "lrm":
        return {"encoder": lrm.EncoderConfig, "transformer": lrm.TransformerConfig, "field": lrm.FieldConfig,
                "renderer": lrm.RendererConfig}
    return {"features": one2345.FeaturesConfig, "cost_volume": one2345.CostVolumeConfig,
            "sparse_cnn": one2345.SparseCNNConfig, "sdf": one2345.SDFConfig, "colour": one2345.ColourConfig,
            "renderer": one2345.RendererConfig}


@pytest.mark.parametrize("family_name", ["lrm", "one2345"])
def test_every_block_option_is_a_config_field(family_name):
    """A block's __init__ argument is a field of its config (settable from a YAML) or derived by the model."""
    from lightning_modules.networks.config import missing_options

    assert {key: missing_options(config) for key, config in _blocks(family_name).items()} == {
        key: [] for key in _blocks(family_name)}


@pytest.mark.parametrize("value", ["false", "true"])
def test_grad_checkpointing_override_arrives_as_a_boolean(value):
    """`--model.init_args.transformer.grad_checkpointing=false` turns checkpointing off (it once arrived as the
    string 'false', which is truthy, and turned it on)."""
    cli = Lift3dCLI(run=False, args=["--config", os.path.join(EXPERIMENT_DIR, "lrm_tiny.yaml"),
                                     "--trainer.logger=false",
                                     f"--model.init_args.transformer.grad_checkpointing={value}",
                                     f"--model.init_args.encoder.grad_checkpointing={value}"])
    assert cli.model.net.transformer.grad_checkpointing is (value == "true")
    assert cli.model.net.encoder.vit.grad_checkpointing is (value == "true")
    assert cli.model.hparams.transformer["grad_checkpointing"] is (value == "true")


def test_a_string_for_a_switch_is_refused_outside_the_cli_too():
    from lightning_modules.networks.lrm.model import LRM

    with pytest.raises(TypeError, match="'transformer': grad_checkpointing must be true or false, got 'false'"):
        LRM(transformer={"grad_checkpointing": "false"})


def test_a_misspelt_option_fails_at_parse_time_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["--config", os.path.join(EXPERIMENT_DIR, "lrm_tiny.yaml"), "--model.init_args.transformer.layrs=3"])
    assert "layrs" in capsys.readouterr().err
    model = yaml.safe_load(open(os.path.join(MODEL_DIR, "one2345_tiny.yaml")))
    model["init_args"]["sdf"]["hiden"] = 32
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(model))
    with pytest.raises(SystemExit):
        parse(["--model", str(tmp_path / "typo.yaml"), "--data", os.path.join(DATA_DIR, "one2345_tiny.yaml")])
    assert "hiden" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["lrm_tiny", "one2345_tiny"])
def test_print_config_shows_every_block_option(name, capsys):
    """`lift3d fit --print_config` lists each block's options, those the YAML leaves to the defaults included, with the
    YAML's values."""
    import dataclasses

    from lightning_modules.launch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", os.path.join(EXPERIMENT_DIR, f"{name}.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    given = load_model_block(os.path.join(MODEL_DIR, f"{name}.yaml")).init_args
    for key, config in _blocks(family(name)).items():
        assert list(printed[key]) == [f.name for f in dataclasses.fields(config)], key
        assert {k: printed[key][k] for k in given[key]} == given[key], key
