"""Weight files the tests write for the loaders that, in real use, read downloaded weights from a local path."""

import torch


def save_tiny_clip(path) -> str:
    """A randomly initialised CLIP (transformers ``CLIPModel``, 32² images, 8² patches) and its image processor,
    saved with ``save_pretrained`` as a real CLIP checkpoint directory is."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def save_random_lpips(path) -> str:
    """An LPIPS-VGG state dict with a random backbone (the format ``LPIPSLoss`` reads besides torchvision's)."""
    from lightning_modules.losses import LPIPSLoss

    torch.manual_seed(0)
    torch.save(LPIPSLoss(pretrained_backbone=False).net.state_dict(), path)
    return str(path)


def save_tiny_zero123(path) -> str:
    """A randomly initialised Zero123 pipeline laid out as a real diffusers Zero123 checkpoint (kxic/zero123-xl-
    diffusers): ``unet/ vae/ image_encoder/ feature_extractor/ scheduler/ cc_projection/`` and ``model_index.json``
    naming the community pipeline module. Tiny (32-channel blocks, CLIP hidden 32 at 32²): 64² images, VAE factor 4."""
    import json
    import os

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from lightning_modules.networks.zero123 import CCProjection

    path = str(path)
    torch.manual_seed(0)
    embed = 32  # CLIP projection_dim = UNet cross_attention_dim (768 in Zero123)
    UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=embed, attention_head_dim=8, norm_num_groups=32,
    ).save_pretrained(os.path.join(path, "unet"))
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32,
        sample_size=64,
    ).save_pretrained(os.path.join(path, "vae"))
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8,
        projection_dim=embed,
    )).save_pretrained(os.path.join(path, "image_encoder"))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        os.path.join(path, "feature_extractor"))
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(os.path.join(path, "scheduler"))
    CCProjection(in_channel=embed + 4, out_channel=embed).save_pretrained(os.path.join(path, "cc_projection"))
    with open(os.path.join(path, "model_index.json"), "w") as f:
        json.dump({"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                   "cc_projection": ["pipeline_zero1to3", "CCProjection"],
                   "feature_extractor": ["transformers", "CLIPImageProcessor"],
                   "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                   "requires_safety_checker": False, "safety_checker": [None, None],
                   "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    return path
