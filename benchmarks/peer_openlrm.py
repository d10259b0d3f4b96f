"""Peer benchmark: whole LRM training steps of lift3d against OpenLRM (3DTopia/OpenLRM, Apache-2.0), side by side.

    git clone https://github.com/3DTopia/OpenLRM /path/to/OpenLRM      # once, outside this repository
    python benchmarks/peer_openlrm.py --openlrm /path/to/OpenLRM [--config configs/experiments/lrm_small.yaml] \
        [--rounds 10] [--warmup 2] [--batch 1 --views 2 --crop 32] [--threads 2] [--json out.json]
    python benchmarks/peer_openlrm.py --lift3d-only ...                # lift3d's half alone (no checkout needed)

Both models are built from the same experiment config at matching sizes: encoder width/depth/heads and input size,
transformer width/depth/heads, triplane tokens, resolution and channels, field MLP width/depth, samples per ray
(coarse + importance), render crop, precision. Both encoders get random weights (OpenLRM's DINO wrapper would
download facebook/dino-vitb16: here its Hugging Face ViT is built from a ``ViTConfig`` of the config's sizes). The
remaining differences are each project's own design and are printed with the parameter counts: OpenLRM's attention
projections have no biases and its camera features are 16 numbers (lift3d: 20), its field concatenates the three
planes' features (first layer 3F wide; lift3d's ``aggregate: sum`` takes F) with ReLU (lift3d: SiLU).

Same inputs (one synthetic batch: random images, the canonical cameras of ``geometry.rigs.lrm32`` with the
supervision views cropped at their centre), same losses and weights (MSE + λ_lpips·LPIPS-VGG [+ λ_mask·MSE(opacity)]
[+ λ_tv·TV(planes)], the config's λ; both LPIPS with a random VGG backbone), same AdamW settings (lr, betas, weight
decay on weight matrices only) and gradient clipping (the trainer's ``gradient_clip_val``).

One lift3d step is what Lightning's automatic optimisation does with ``LRMModule`` (the module under a barebones
``Trainer``): ``training_step`` (the module's own seeding, canonical cameras, network, losses and logging calls) →
``loss.backward()`` → ``on_before_optimizer_step`` → ``configure_gradient_clipping`` (Lightning's precision plugin
clipping, or the module's override) → ``optimizer_step`` → the per-step LR scheduler → ``zero_grad``, with the
optimiser ``configure_optimizers`` returns. One OpenLRM step is its runner's (``openlrm/runners/train/lrm.py``):
``ModelLRM.forward`` → losses → backward → ``clip_grad_norm_`` (accelerate's, one process) → ``AdamW.step`` (OpenLRM's
settings: PyTorch's default implementation) → ``zero_grad``; ``torch.compile`` off, as OpenLRM's training configs set
(``compile.disable: true``), and the same for lift3d (eager).

Steps are timed interleaved in one process after ``--warmup`` steps of each and the memory rounds. A timed round is
an A B B A block (lift3d, OpenLRM, OpenLRM, lift3d; the next round B A A B) and gives one ratio, OpenLRM's two step
times ÷ lift3d's two (= lift3d samples/s ÷ OpenLRM samples/s): a change of the machine's speed that is linear over
the block cancels, where a single pair of steps carries it whole (on a shared 2-core VM the same bf16 matmul took
2.1 ms and 4.7 ms minutes apart; BENCHMARKS.md, peer section). The median of the rounds' ratios is ``speedup``, the
extremes its spread; a side's samples/s and stages are medians over all its timed steps. Stages come from hooks on
the networks' boundaries (perf_counter on a CPU, CUDA events on a GPU): encoder (forward + backward), transformer
(camera embedding, blocks, upsampling; forward + backward), render forward, render backward (with lift3d's deferred
re-render when it defers), losses (forward + backward down to the rendered images), clipping + optimiser (grad-norm
logging, clipping, AdamW, scheduler).

Peak memory is measured first, in untimed rounds after the warm-up (``--memory-rounds``, a step of each a round): a
model's peak = its persistent training state (parameters, buffers, optimiser state) + the largest rise above the
step's starting memory in those rounds. On a GPU the rise is ``max_memory_allocated`` after
``reset_peak_memory_stats``. On a CPU it is the process's resident high-water mark (``VmHWM``, reset before each step
through ``/proc/self/clear_refs``) minus the resident size at the step's start, with glibc's ``mmap`` threshold
pinned at 128 KiB (``mallopt``) from the start until the memory rounds end, so every tensor buffer is mapped on
allocation and unmapped on release and the resident size follows the live tensors (the dynamic threshold would keep
freed buffers of one model resident for the other's step, and a heap that timed steps had filled would hide rises).

The timed rounds come after, with the thresholds where glibc's dynamic ones settle in a training process (mmap 32 MiB,
trim 64 MiB: freed buffers are reused) and one more step of each on that heap. The pin is not for timing: with every
buffer a fresh mapping, page faults took 21 % of lift3d's and 27 % of OpenLRM's CPU time per step (2.1 s and 3.1–3.8 s
of system time, 1.25 M and 1.9 M faults; 0.1–0.3 s without it), a cost a training process does not pay and one that fell
harder on OpenLRM's per-tensor AdamW temporaries (BENCHMARKS.md, peer section; ``--time-pinned`` times that way, for
comparison). Each side's median system time and minor page faults per timed step are reported with the stages.
tracemalloc does not see PyTorch's allocations, and a process-wide ``ru_maxrss`` cannot separate two models in one
process.

Precision ``auto`` is the config's trainer precision where the device runs it natively (bf16-mixed on a GPU with
bf16, or on a CPU with AVX-512 BF16 or AMX, under ``torch.autocast`` as Lightning's plugin does), fp32 otherwise;
``--precision 32`` / ``bf16`` force one. Both models run under the same autocast.

The machine's load average is recorded before and after: on a shared machine the interleaved ratio is the figure
to compare, not the absolute samples/s. On a loaded machine ``--threads 1 --clock cpu`` times the stages in the
process's CPU time, which counts the work each step does and not the time it waits for a core (with more threads
it would also count the threads' spin-waiting): a diagnostic of where the time goes, not the figure to report.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.util
import json
import logging
import os
import platform
import resource
import sys
import time
import types
import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repository

from configs import ROOT, load_block, load_model_block  # noqa: E402
from geometry.rays import canonicalize_cameras  # noqa: E402
from geometry.rigs import lrm32  # noqa: E402

if TYPE_CHECKING:
    from lightning_modules.networks.lrm.model import LRM

DEFAULT_CONFIG = os.path.join("configs", "experiments", "lrm_small.yaml")
HOW_TO_GET = ("get a checkout of OpenLRM outside this repository (git clone https://github.com/3DTopia/OpenLRM "
              "/path/to/OpenLRM) and pass --openlrm /path/to/OpenLRM or set OPENLRM_DIR; --lift3d-only times "
              "lift3d's half alone")
STAGES = ("encoder", "transformer", "render_forward", "render_backward", "losses", "clip_optimizer")
GIB = 2 ** 30


# --- configuration --------------------------------------------------------------------------------------------------
def load_experiment(path: str) -> tuple[dict, dict, dict]:
    """(model init_args, data init_args, trainer block) of an LRM experiment config."""
    path = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(ROOT, path)
    model = load_model_block(path)
    if not model.class_path.endswith("LRMModule"):
        raise ValueError(f"{path}: its model is {model.class_path}, not an LRMModule; the peer benchmark compares "
                         f"LRMs: give an LRM experiment config such as {DEFAULT_CONFIG}")
    with open(path) as f:
        trainer = yaml.safe_load(f).get("trainer") or {}
    if isinstance(trainer, str):  # a trainer YAML, relative to the experiment as LightningCLI reads it
        with open(os.path.join(os.path.dirname(path), trainer)) as f:
            trainer = yaml.safe_load(f) or {}
    return dict(model.init_args), dict(load_block(path, "data").init_args), dict(trainer)


def openlrm_checkout(arg: Optional[str]) -> Optional[str]:
    """The OpenLRM checkout given by ``--openlrm`` or ``OPENLRM_DIR`` (None when neither is set)."""
    path = arg or os.environ.get("OPENLRM_DIR")
    if not path:
        return None
    if not os.path.isfile(os.path.join(path, "openlrm", "models", "modeling_lrm.py")):
        raise SystemExit(f"peer_openlrm: {path!r} is not an OpenLRM checkout (no openlrm/models/modeling_lrm.py): "
                         f"{HOW_TO_GET}")
    return os.path.abspath(path)


# --- memory -----------------------------------------------------------------------------------------------------------
def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):  # not glibc
        return False


def pin_malloc_threshold() -> bool:
    """glibc: map every allocation above 128 KiB on its own and unmap it on release (see the module docstring)."""
    return _mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; a fixed value turns the dynamic one off


def release_malloc_threshold() -> None:
    """Undo :func:`pin_malloc_threshold` for an in-process caller: the ceiling glibc's dynamic thresholds climb to
    (mmap 32 MiB, trim twice that), so freed buffers are reused again."""
    _mallopt(-3, 32 * 2 ** 20)  # M_MMAP_THRESHOLD
    _mallopt(-1, 64 * 2 ** 20)  # M_TRIM_THRESHOLD


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix multiplies natively: a GPU with bf16, a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Largest rise of the device's memory above its level at ``start()``, read at ``stop()``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_ok = device.type == "cpu" and os.path.exists("/proc/self/clear_refs")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.cpu_ok:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident size
            self.base = _status_kib("VmRSS") * 1024

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.cpu_ok:
            return _status_kib("VmHWM") * 1024 - self.base
        return 0


def state_bytes(modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> int:
    seen, total = set(), 0
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# --- stage timing -----------------------------------------------------------------------------------------------------
class Marks:
    """Named time points of one step: perf_counter on a CPU (``clock="cpu"``: the process's CPU time, see
    ``--clock``), CUDA events on a GPU."""

    clock: Callable[[], float] = time.perf_counter

    def __init__(self, device: torch.device):
        self.device = device
        self.points: dict[str, Any] = {}  # name → a CUDA event or a clock reading

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.points[name] = ev
        else:
            self.points[name] = Marks.clock()

    def seconds(self, a: str, b: str) -> float:
        if self.device.type == "cuda":
            return self.points[a].elapsed_time(self.points[b]) / 1000
        return self.points[b] - self.points[a]

    def stages(self) -> dict[str, float]:
        if self.device.type == "cuda":
            self.points["end"].synchronize()
        p = self.points
        tokens_back = "bwd_tokens" if "bwd_tokens" in p else "bwd_end"  # a frozen encoder gets no gradient
        s = self.seconds
        return {"step": s("start", "end"),
                "encoder": s("start", "fwd_encoder") + s(tokens_back, "bwd_end"),
                "transformer": s("fwd_encoder", "fwd_planes") + s("bwd_planes", tokens_back),
                "render_forward": s("fwd_planes", "fwd_render"),
                "render_backward": s("bwd_images", "bwd_planes"),
                "losses": s("fwd_render", "fwd_loss") + s("fwd_loss", "bwd_images"),
                "clip_optimizer": s("bwd_end", "end")}


def watch(marks: Marks, module: torch.nn.Module, fwd: str, bwd: Optional[str],
          pick: Callable = lambda out: out) -> list:
    """Mark ``fwd`` when ``module``'s forward returns and ``bwd`` when the gradient of its output (``pick(out)``)
    has been computed."""
    def hook(_mod, _inp, out):
        marks(fwd)
        t = pick(out)
        if bwd and torch.is_tensor(t) and t.requires_grad:
            t.register_hook(lambda g: marks(bwd))
        return None
    return [module.register_forward_hook(hook)]


# --- inputs -----------------------------------------------------------------------------------------------------------
def synthetic_inputs(img_size: int, target_size: int, batch: int, views: int, crop: int,
                     camera_distance: Optional[float]) -> dict:
    """One batch in lift3d's layout (``datamodules.views.finalize``'s keys) and the same views in OpenLRM's."""
    c2w, K = [], []
    for b in range(batch):
        rig = lrm32(f"peer-{b}", resolution=target_size, num_views=views + 1)
        c2w.append(rig.c2w)
        K.append(rig.K)
    c2w = torch.tensor(np.stack(c2w), dtype=torch.float32)  # (B, 1 + V, 4, 4) OpenCV camera-to-world
    K_full = torch.tensor(np.stack(K), dtype=torch.float32)  # (B, 1 + V, 3, 3) pixels of target_size² views
    off = (target_size - crop) // 2  # centred crops of the supervision views
    K_crop = K_full.clone()
    K_crop[:, 1:, :2, 2] -= off
    K_in = K_full[:, 0].clone()
    K_in[:, :2] *= img_size / target_size  # the input view at the encoder's size
    g = torch.Generator().manual_seed(0)
    lift3d = {"input_image": torch.rand(batch, 3, img_size, img_size, generator=g),
              "input_c2w": c2w[:, 0], "input_K": K_in, "target_c2w": c2w[:, 1:], "target_K": K_crop[:, 1:],
              "target_images": torch.rand(batch, views, 3, crop, crop, generator=g),
              "target_masks": (torch.rand(batch, views, 1, crop, crop, generator=g) > 0.5).float(),
              "target_depths": torch.zeros(batch, views, 1, crop, crop),
              "background": torch.ones(batch, 3)}
    # OpenLRM: cameras in the same canonical frame; its ray sampler turns OpenCV camera points with
    # c2w·diag(1, −1, −1, 1), so c2w_openlrm = c2w_opencv·diag(1, −1, −1, 1) gives the same rays
    canon, targets, _ = canonicalize_cameras(c2w[:, 0], c2w[:, 1:], camera_distance)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    norm = torch.tensor([[1 / target_size, 0, 1 / target_size], [0, 1 / target_size, 1 / target_size], [0, 0, 1]])
    k_src = K_full[:, 0] * norm
    source_camera = torch.cat([(canon @ flip)[:, :3].flatten(1), k_src[:, 0, 0:1], k_src[:, 1, 1:2],
                               k_src[:, 0, 2:3], k_src[:, 1, 2:3]], dim=-1)  # (B, 12 + 4): build_camera_principle
    render_cameras = torch.cat([(targets @ flip).flatten(2), (K_full[:, 1:] * norm).flatten(2)], dim=-1)  # (B, V, 25)
    openlrm = {"image": lift3d["input_image"], "source_camera": source_camera, "render_cameras": render_cameras,
               "render_anchors": torch.full((batch, views, 2), float(off)),
               "render_resolutions": torch.full((batch, views, 1), float(target_size)),
               "render_bg_colors": torch.ones(batch, views, 1), "render_region_size": crop,
               "target_images": lift3d["target_images"], "target_masks": lift3d["target_masks"]}
    return {"lift3d": lift3d, "openlrm": openlrm}


def to_device(batch: dict, device: torch.device, keep_cpu: tuple = ()) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) and k not in keep_cpu else v for k, v in batch.items()}


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- lift3d -------------------------------------------------------------------------------------------------------
class Lift3dSide:
    name = "lift3d"

    def __init__(self, model_cfg: dict, clip: float, device: torch.device, precision: str):
        import lightning as L

        from lightning_modules.lrm import LRMModule

        cfg = dict(model_cfg)
        cfg["encoder"] = dict(cfg.get("encoder") or {}, pretrained=False, checkpoint_path=None)
        cfg.update(lpips_weights=None, lpips_pretrained=False, total_steps=cfg.get("total_steps") or 100_000)
        self.module = LRMModule(**cfg).to(device).train()
        # the module under a barebones Trainer: Lightning's clipping path works, self.log is a no-op
        self.trainer = L.Trainer(accelerator=device.type, devices=1, barebones=True, gradient_clip_val=clip,
                                 gradient_clip_algorithm="norm", max_steps=1)
        self.module.trainer = self.trainer
        conf = self.module.configure_optimizers()
        self.optimizer = conf["optimizer"] if isinstance(conf, dict) else conf
        sched = conf.get("lr_scheduler") if isinstance(conf, dict) else None
        self.scheduler = sched["scheduler"] if isinstance(sched, dict) else sched
        self.clip, self.device, self.precision = clip, device, precision
        self.marks = Marks(device)
        net = self.module.net
        watch(self.marks, net.encoder, "fwd_encoder", "bwd_tokens")
        watch(self.marks, net.transformer, "fwd_planes", "bwd_planes")
        watch(self.marks, net.renderer, "fwd_render", "bwd_images", pick=lambda out: out["rgb"])

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.net.parameters())

    def optimizer_path(self) -> str:
        d = self.optimizer.defaults
        return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "per-tensor (for-loop)"

    def state_bytes(self) -> int:
        return state_bytes([self.module], self.optimizer)

    def step(self, batch: dict) -> dict[str, float]:
        m, opt, mk = self.module, self.optimizer, self.marks
        mk("start")
        with autocast(self.device, self.precision):
            loss = m.training_step(batch, 0)
        mk("fwd_loss")
        loss.backward()  # Lightning: strategy.backward → LightningModule.backward → loss.backward()
        mk("bwd_end")
        m.on_before_optimizer_step(opt)
        m.configure_gradient_clipping(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        m.optimizer_step(0, 0, opt)
        if self.scheduler is not None:
            self.scheduler.step()
        m.optimizer_zero_grad(0, 0, opt)
        mk("end")
        return mk.stages()


# --- OpenLRM ---------------------------------------------------------------------------------------------------------
def import_openlrm(checkout: str) -> tuple[types.ModuleType, list[str]]:
    """``openlrm.models.modeling_lrm`` from the checkout, with ``torch.compile`` off. Its modules import
    ``accelerate.logging.get_logger`` (a logging adapter) only; without accelerate installed that one function is
    given as the standard library's ``logging.getLogger``. Returns the module and what had to be provided."""
    provided = []
    if importlib.util.find_spec("accelerate") is None:
        acc, acc_log = types.ModuleType("accelerate"), types.ModuleType("accelerate.logging")
        setattr(acc_log, "get_logger", lambda name, log_level=None: logging.getLogger(name))  # stand-in modules
        setattr(acc, "logging", acc_log)
        sys.modules["accelerate"], sys.modules["accelerate.logging"] = acc, acc_log
        provided.append("accelerate.logging.get_logger → logging.getLogger (accelerate is not installed)")
    torch._dynamo.config.disable = True  # OpenLRM's training configs: compile.disable: true
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    import openlrm.models.modeling_lrm as modeling_lrm
    return modeling_lrm, provided


class OpenLRMSide:
    name = "openlrm"

    def __init__(self, checkout: str, lift3d_net: LRM, model_cfg: dict, clip: float,
                 device: torch.device, precision: str):
        import lpips
        from torch import nn
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        modeling_lrm, self.provided = import_openlrm(checkout)
        from openlrm.models.encoders.dino_wrapper import DinoWrapper
        from openlrm.models.rendering.synthesizer import OSGDecoder

        enc, tr, field, rnd = (lift3d_net.encoder, lift3d_net.transformer, lift3d_net.field, lift3d_net.renderer)
        vit = enc.vit
        vit_block: Any = vit.blocks[0]  # a timm Block (blocks is typed as a Sequential of Modules)
        self.notes: list[str] = []
        vit_config = ViTConfig(hidden_size=vit.embed_dim, num_hidden_layers=len(vit.blocks),
                               num_attention_heads=vit_block.attn.num_heads,
                               intermediate_size=vit_block.mlp.fc1.out_features, image_size=enc.img_size,
                               patch_size=enc.patch, qkv_bias=True, layer_norm_eps=1e-6, hidden_act="gelu")
        mean, std = enc.mean.flatten().tolist(), enc.std.flatten().tolist()

        class RandomDino(DinoWrapper):
            """OpenLRM's DINO wrapper (its forward, processor call and freezing) over a random ViT of the config's
            sizes instead of the downloaded facebook/dino-vitb16."""

            @staticmethod
            def _build_dino(model_name, *args, **kwargs):
                return (ViTModel(vit_config, add_pooling_layer=False),
                        ViTImageProcessor(do_resize=False, do_rescale=False, image_mean=mean, image_std=std))

        class RandomEncoderLRM(modeling_lrm.ModelLRM):  # type: ignore[name-defined]  # imported from the checkout
            @staticmethod
            def _encoder_fn(encoder_type):
                return RandomDino

        samples = rnd.num_coarse + rnd.num_fine
        if rnd.num_coarse != rnd.num_fine:
            self.notes.append(f"OpenLRM splits samples per ray in halves: {samples // 2} + {samples // 2} against "
                              f"lift3d's {rnd.num_coarse} + {rnd.num_fine}")
        tr_block: Any = tr.blocks[0]  # a TransformerBlock (blocks is typed as a ModuleList of Modules)
        self.model = RandomEncoderLRM(
            camera_embed_dim=lift3d_net.camera_embedder.mlp[0].out_features, rendering_samples_per_ray=samples,
            transformer_dim=tr.dim, transformer_layers=len(tr.blocks), transformer_heads=tr_block.attn.heads,
            triplane_low_res=tr.token_res, triplane_high_res=2 * tr.token_res,
            triplane_dim=tr.upsample.out_channels, encoder_freeze=enc.frozen, encoder_type="dino",
            encoder_model_name="random", encoder_feat_dim=enc.dim)
        # the field MLP at the config's width and depth (OSGDecoder's own arguments; OpenLRM fixes 64 × 4)
        hidden = field.mlp[0].out_features
        layers = sum(isinstance(m, nn.Linear) for m in field.mlp)
        self.model.synthesizer.decoder = OSGDecoder(n_features=tr.upsample.out_channels, hidden_dim=hidden,
                                                    num_layers=layers)
        if field.aggregate != "concat":
            self.notes.append(f"field input: OpenLRM concatenates the planes' features (3F = "
                              f"{3 * tr.upsample.out_channels}), lift3d's config sums them (F = "
                              f"{tr.upsample.out_channels})")
        self.notes.append("OpenLRM: attention projections without biases, 16 camera numbers (lift3d 20), ReLU field "
                          "(lift3d SiLU)")
        self.model.to(device).train()
        hp = model_cfg
        self.lpips_weight = float(hp.get("lpips_weight", 2.0))
        self.mask_weight, self.tv_weight = float(hp.get("mask_weight", 0.0)), float(hp.get("tv_weight", 0.0))
        if hp.get("depth_weight"):
            self.notes.append("depth loss: OpenLRM has none; lift3d's config weights one (its cost is on lift3d's "
                              "side)")
        self.lpips = None
        if self.lpips_weight > 0:  # OpenLRM's LPIPSLoss: lpips.LPIPS(net="vgg"); random backbone as lift3d's
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, eval_mode=True, verbose=False)
            self.lpips.requires_grad_(False).to(device)
        # OpenLRM's optimiser groups (runners/train/lrm.py): LayerNorm and biases without decay
        no_decay: list[torch.Tensor] = []
        for module in self.model.modules():
            if isinstance(module, nn.LayerNorm):
                no_decay.extend(module.parameters())
            elif getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
                no_decay.append(module.bias)
        ids = set(map(id, no_decay))
        decay = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
        no_decay = [p for p in no_decay if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(hp.get("weight_decay", 0.05))},
             {"params": no_decay, "weight_decay": 0.0}], lr=float(hp.get("lr", 4e-4)),
            betas=tuple(hp.get("betas", (0.9, 0.95))))
        self.clip, self.device, self.precision = clip, device, precision
        self.marks = Marks(device)
        watch(self.marks, self.model.encoder, "fwd_encoder", "bwd_tokens")
        watch(self.marks, self.model.upsampler, "fwd_planes", "bwd_planes")
        watch(self.marks, self.model.synthesizer, "fwd_render", "bwd_images", pick=lambda out: out["images_rgb"])

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def optimizer_path(self) -> str:
        d = self.optimizer.defaults
        if d.get("fused"):
            return "fused"
        if d.get("foreach") is None:  # PyTorch's default: foreach on CUDA tensors, the for-loop elsewhere
            return "foreach (PyTorch default)" if self.device.type == "cuda" else "per-tensor (PyTorch default)"
        return "foreach" if d.get("foreach") else "per-tensor"

    def state_bytes(self) -> int:
        return state_bytes([self.model] + ([self.lpips] if self.lpips is not None else []), self.optimizer)

    def step(self, batch: dict) -> dict[str, float]:
        mk, opt = self.marks, self.optimizer
        mk("start")
        with autocast(self.device, self.precision):
            out = self.model(image=batch["image"], source_camera=batch["source_camera"],
                             render_cameras=batch["render_cameras"], render_anchors=batch["render_anchors"],
                             render_resolutions=batch["render_resolutions"], render_bg_colors=batch["render_bg_colors"],
                             render_region_size=batch["render_region_size"])
            pred, target = out["images_rgb"].float(), batch["target_images"]
            n, v = pred.shape[:2]
            # OpenLRM's PixelLoss and LPIPSLoss: per image, then per sample, then the batch mean
            loss = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(2, 3, 4)).mean()
            if self.lpips is not None:
                lp = self.lpips(pred.flatten(0, 1), target.flatten(0, 1), normalize=True).mean(dim=(1, 2, 3))
                loss = loss + self.lpips_weight * lp.reshape(n, v).mean()
            if self.mask_weight:
                loss = loss + self.mask_weight * torch.nn.functional.mse_loss(out["images_weight"].float(),
                                                                            batch["target_masks"])
            if self.tv_weight:
                from lightning_modules.losses import triplane_tv
                loss = loss + self.tv_weight * triplane_tv(out["planes"].float())
        mk("fwd_loss")
        loss.backward()
        mk("bwd_end")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)  # accelerate.clip_grad_norm_, 1 process
        opt.step()
        opt.zero_grad()
        mk("end")
        return mk.stages()


# --- the benchmark ----------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    return f"{name} ({torch.get_num_threads()} threads)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--openlrm", default=None, help="OpenLRM checkout (default: $OPENLRM_DIR)")
    p.add_argument("--lift3d-only", action="store_true", help="time lift3d's half alone (no OpenLRM checkout)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="LRM experiment config both models are built from")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=10,
                   help="timed rounds, each two steps of each model in A B B A order (see the module docstring)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=0, help="samples per step (0: 1 on a CPU, the config's on a GPU)")
    p.add_argument("--views", type=int, default=0, help="supervision views (0: 2 on a CPU, the config's on a GPU)")
    p.add_argument("--crop", type=int, default=0, help="render crop (0: 32 on a CPU, the config's on a GPU)")
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16"],
                   help="auto: the config's trainer precision where the device runs it natively, else 32")
    p.add_argument("--memory-rounds", type=int, default=2,
                   help="untimed rounds before the timed ones that measure peak memory (see the module docstring)")
    p.add_argument("--time-pinned", action="store_true",
                   help="CPU: keep the memory rounds' pinned mmap threshold for the timed rounds too (how the figures "
                        "before 2026-12-05 23:30 were timed; it overstates page faults, see the module docstring)")
    p.add_argument("--threads", type=int, default=2, help="torch threads on a CPU")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="CPU only: wall (perf_counter, the figures to report) or cpu (the process's CPU time: on a "
                        "shared, loaded machine with --threads 1 it counts the work done, not the time spent waiting "
                        "for a core)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    for name in ("rounds", "memory_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1 (the figures are medians and "
                    f"maxima over these rounds)")
    return args


def summarise(times: list[dict]) -> dict[str, float]:
    return {k: float(np.median([t[k] for t in times])) for k in ("step",) + STAGES}


def main(argv=None) -> dict:
    threads = torch.get_num_threads()
    try:
        return run(parse_args(argv), argv)
    finally:
        torch.set_num_threads(threads)  # called in-process (the smoke test), leave the caller's setting
        Marks.clock = time.perf_counter
        release_malloc_threshold()


def run(args: argparse.Namespace, argv) -> dict:
    checkout = None if args.lift3d_only else openlrm_checkout(args.openlrm)
    if checkout is None and not args.lift3d_only:
        print(f"peer_openlrm: no OpenLRM checkout given: {HOW_TO_GET}", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    Marks.clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*barebones.*")
    model_cfg, data_cfg, trainer_cfg = load_experiment(args.config)
    gpu = device.type == "cuda"
    batch = args.batch or (int(data_cfg.get("batch_size", 1)) if gpu else 1)
    views = args.views or (int(data_cfg.get("num_target_views", 2)) if gpu else 2)
    crop = args.crop or ((int(data_cfg.get("target_crop_size") or 0) or int(data_cfg.get("target_size", 32)))
                         if gpu else 32)
    target_size = max(int(data_cfg.get("target_size", crop) or crop), crop)
    precision = args.precision if args.precision != "auto" else (
        "bf16" if "bf16" in str(trainer_cfg.get("precision", "32")) and native_bf16(device) else "32")
    clip = float(trainer_cfg.get("gradient_clip_val") or 0.0)
    load_before, probe_before = os.getloadavg(), matmul_probe(device, precision)

    torch.manual_seed(0)
    lift3d = Lift3dSide(model_cfg, clip, device, precision)
    sides: list[Lift3dSide | OpenLRMSide] = [lift3d]
    openlrm: Optional[OpenLRMSide] = None
    if checkout:
        torch.manual_seed(0)
        openlrm = OpenLRMSide(checkout, lift3d.module.net, model_cfg, clip, device, precision)
        sides.append(openlrm)
    inputs = synthetic_inputs(lift3d.module.net.encoder.img_size, target_size, batch, views, crop,
                              model_cfg.get("camera_distance", 2.0))
    batches = {"lift3d": to_device(inputs["lift3d"], device),
               "openlrm": to_device(inputs["openlrm"], device, keep_cpu=("image",))}  # its processor reads CPU images
    for side in sides:
        print(f"{side.name}: {side.params / 1e6:.2f} M parameters, AdamW {side.optimizer_path()}", flush=True)
        for note in getattr(side, "notes", []) + getattr(side, "provided", []):
            print(f"  {note}")

    def order(r: int) -> list:  # the order alternates each round
        return sides if r % 2 == 0 else sides[::-1]

    # memory first, on a heap no timed step has used yet (see the module docstring)
    pinned = pin_malloc_threshold() if device.type == "cpu" else False
    for side in sides:
        for _ in range(args.warmup):
            side.step(batches[side.name])
    peak = PeakMemory(device)
    rises = {s.name: 0 for s in sides}
    for r in range(args.memory_rounds):
        for side in order(r):
            peak.start()
            side.step(batches[side.name])
            rises[side.name] = max(rises[side.name], peak.stop())
    # timing with the allocator as a training process has it, after a step of each on it
    if pinned and not args.time_pinned:
        release_malloc_threshold()
        for side in sides:
            side.step(batches[side.name])
    times: dict[str, list[dict[str, float]]] = {s.name: [] for s in sides}
    kernel: dict[str, list[tuple[float, int]]] = {s.name: [] for s in sides}  # (system time s, minor page faults)
    for r in range(args.rounds):
        for side in order(r) + order(r)[::-1]:  # A B B A, then B A A B (see the module docstring)
            before = resource.getrusage(resource.RUSAGE_SELF)
            times[side.name].append(side.step(batches[side.name]))
            after = resource.getrusage(resource.RUSAGE_SELF)
            kernel[side.name].append((after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-2]['step']:.3f} + {t[-1]['step']:.3f} s"
                                                              for n, t in times.items()),
              flush=True)
    load_after, probe_after = os.getloadavg(), matmul_probe(device, precision)

    result = {"config": args.config, "device": device_name(device), "torch": torch.__version__,
              "batch": batch, "views": views, "crop": crop, "precision": precision, "rounds": args.rounds,
              "warmup": args.warmup, "memory_rounds": args.memory_rounds, "time_pinned": args.time_pinned,
              "load_before": list(load_before), "load_after": list(load_after),
              "matmul_probe_ms": [probe_before, probe_after],
              "clock": "cuda events" if gpu else ("process CPU time" if args.clock == "cpu" else "wall"),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python benchmarks/peer_openlrm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "memory_method": ("cuda max_memory_allocated" if gpu else
                                "VmHWM rise (clear_refs), mmap threshold pinned in the memory rounds" if pinned
                                else "VmHWM rise")}
    for side in sides:
        med = summarise(times[side.name])
        result[f"params_{side.name}"] = side.params
        result[f"peak_mem_{side.name}"] = side.state_bytes() + rises[side.name]
        result[f"samples_per_s_{side.name}"] = batch / med["step"]
        result[f"stages_{side.name}"] = med
        result[f"step_s_{side.name}"] = [t["step"] for t in times[side.name]]
        result[f"optimizer_{side.name}"] = side.optimizer_path()
        result[f"system_s_{side.name}"] = float(np.median([k[0] for k in kernel[side.name]]))
        result[f"minor_faults_{side.name}"] = int(np.median([k[1] for k in kernel[side.name]]))
    if openlrm is not None:  # set exactly when a checkout was given
        ratios = round_ratios([t["step"] for t in times["lift3d"]], [t["step"] for t in times["openlrm"]])
        result.update(speedup=float(np.median(ratios)), speedup_min=min(ratios), speedup_max=max(ratios),
                      ratios=ratios, notes=openlrm.notes, provided=openlrm.provided)
    report(result, [s.name for s in sides])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def matmul_probe(device: torch.device, precision: str, repeats: int = 20) -> float:
    """Milliseconds of one 768×768 @ 768×3072 matmul (a transformer MLP's shape) in the run's precision, median of
    ``repeats``, before and after the run: the machine's speed at the time, which drifts on a shared VM (the same
    probe read 1.8–5.8 ms between runs here), so two runs' figures can be told apart by the state they ran in."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(768, 768, device=device, dtype=dtype)
    b = torch.randn(768, 3072, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:]) * 1e3)


def round_ratios(lift3d: list[float], openlrm: list[float]) -> list[float]:
    """Each A B B A round's ratio from the two sides' step times in the order they ran (two a round): OpenLRM's two
    steps ÷ lift3d's two, so a machine speed that drifts linearly over the round cancels."""
    def rounds(steps: list[float]) -> list[float]:
        return [a + b for a, b in zip(steps[::2], steps[1::2])]

    return [o / li for li, o in zip(rounds(lift3d), rounds(openlrm))]


def report(r: dict, names: list[str]) -> None:
    print(f"\n# {r['date']} · {r['device']} · torch {r['torch']} · {r['config']} · batch {r['batch']} × "
          f"{r['views']} views × {r['crop']}² · precision {r['precision']} · {r['rounds']} rounds after "
          f"{r['warmup']} warm-up · load {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} · matmul probe "
          f"{r['matmul_probe_ms'][0]:.2f} → {r['matmul_probe_ms'][1]:.2f} ms · clock {r['clock']}")
    print("| stage (median s) | " + " | ".join(names) + (" | lift3d ÷ OpenLRM speed |" if len(names) > 1 else " |"))
    print("|---|" + "---|" * (len(names) + (len(names) > 1)))
    for k in ("step",) + STAGES:
        vals = [r[f"stages_{n}"][k] for n in names]
        ratio = f" | {vals[1] / vals[0]:.2f}" if len(names) > 1 and vals[0] > 0 else (" | –" if len(names) > 1 else "")
        print(f"| {k} | " + " | ".join(f"{v:.3f}" for v in vals) + ratio + " |")
    print("| samples/s | " + " | ".join(f"{r[f'samples_per_s_{n}']:.3f}" for n in names)
          + (f" | **{r['speedup']:.2f}** ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}) |" if len(names) > 1
             else " |"))
    print("| peak memory GiB | " + " | ".join(f"{r[f'peak_mem_{n}'] / GIB:.2f}" for n in names)
          + (" | |" if len(names) > 1 else " |"))
    print("| parameters M | " + " | ".join(f"{r[f'params_{n}'] / 1e6:.2f}" for n in names)
          + (" | |" if len(names) > 1 else " |"))
    print("| AdamW | " + " | ".join(r[f"optimizer_{n}"] for n in names) + (" | |" if len(names) > 1 else " |"))
    print("| system time s (median) | " + " | ".join(f"{r[f'system_s_{n}']:.3f}" for n in names)
          + (" | |" if len(names) > 1 else " |"))
    print("| minor page faults (median) | " + " | ".join(f"{r[f'minor_faults_{n}']}" for n in names)
          + (" | |" if len(names) > 1 else " |"))


if __name__ == "__main__":
    main()
