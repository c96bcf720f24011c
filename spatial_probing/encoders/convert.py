"""open_clip CLIP (ViT towers, built-in text tower) -> transformers CLIPModel, weight for weight.

This is what proves the CLIP code paths without pretrained weights: the same (e.g. random) weights
run through both libraries must give the same features. ``export_hf_clip`` writes a complete
transformers directory (weights, config, tokenizer, image processor) that ``hf-clip:<dir>`` loads.

Mapping: attention ``in_proj`` is split into q/k/v; ``ln_1/ln_2`` -> ``layer_norm1/2``;
``mlp.c_fc/c_proj`` -> ``mlp.fc1/fc2``; ``ln_pre/ln_post`` -> ``pre_layrnorm/post_layernorm``;
``class_embedding``, ``conv1`` and positional embeddings copied; ``proj`` / ``text_projection``
(``x @ P``) transposed into ``nn.Linear`` weights (``x @ W.T``); ``logit_scale`` copied; QuickGELU
(OpenAI-trained variants) -> ``hidden_act="quick_gelu"``.

Without network, ``python -m spatial_probing.encoders.convert OUT_DIR [--arch ViT-B-32]`` writes the
set-up of a transformers CLIP directory (config, tokenizer, image processor; no weights) for an
open_clip architecture: enough for ``hf-clip:OUT_DIR+random-init``, which is how ``make reproduce`` runs
the first study's CLIP variants offline. With network or downloaded weights, pass
``hf-clip:openai/clip-vit-base-patch32`` (or the downloaded directory) instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transformer import QuickGELU, VisionTransformer
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
from transformers.image_utils import PILImageResampling

from spatial_probing.encoders.base import seeded
from spatial_probing.errors import EncoderError

# open_clip block parameter prefix -> transformers encoder-layer prefix (besides the split in_proj).
_BLOCK_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_RESAMPLE = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}


def _check_convertible(model: torch.nn.Module) -> None:
    """Refuse variants the mapping does not cover, rather than convert them silently wrong."""
    if not isinstance(model, open_clip.CLIP) or not isinstance(model.visual, VisionTransformer):
        raise EncoderError(
            f"cannot convert {type(model).__name__}: only open_clip.CLIP with a ViT image tower converts"
        )
    visual = model.visual
    blocks = [*model.transformer.resblocks, *visual.transformer.resblocks]
    unsupported = {
        "text pooling other than argmax (EOT)": model.text_pool_type != "argmax",
        "image pooling other than the class token": visual.pool_type != "tok" or visual.attn_pool is not None,
        "layer norm after pooling": visual.final_ln_after_pool,
        "no ln_pre": not isinstance(visual.ln_pre, torch.nn.LayerNorm),
        "a Linear text projection": not isinstance(model.text_projection, torch.nn.Parameter),
        "layer scale": any(not isinstance(b.ls_1, torch.nn.Identity) for b in blocks),
        "a logit bias": model.logit_bias is not None,
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        raise EncoderError(
            f"cannot convert this open_clip model to transformers CLIP: it has {', '.join(found)}"
        )


def _tower_config(blocks: torch.nn.ModuleList, layer_norm: torch.nn.LayerNorm) -> dict[str, Any]:
    """Width, depth, heads, MLP width and activation of one transformer tower."""
    block = blocks[0]
    return {
        "hidden_size": block.attn.embed_dim,
        "intermediate_size": block.mlp.c_fc.out_features,
        "num_hidden_layers": len(blocks),
        "num_attention_heads": block.attn.num_heads,
        "hidden_act": "quick_gelu" if isinstance(block.mlp.gelu, QuickGELU) else "gelu",
        "layer_norm_eps": layer_norm.eps,
    }


def hf_clip_config(model: open_clip.CLIP) -> CLIPConfig:
    """The CLIPConfig describing the same architecture as an open_clip CLIP model."""
    _check_convertible(model)
    visual = model.visual
    vocab_size = model.token_embedding.num_embeddings
    text = _tower_config(model.transformer.resblocks, model.ln_final) | {
        "vocab_size": vocab_size,
        "max_position_embeddings": model.positional_embedding.shape[0],
        "projection_dim": model.text_projection.shape[1],
        # CLIP's BPE vocab ends with <start_of_text>, <end_of_text>; transformers pools the first EOS,
        # which is the position open_clip's argmax pooling picks.
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
    }
    vision = _tower_config(visual.transformer.resblocks, visual.ln_pre) | {
        "image_size": visual.image_size[0],
        "patch_size": visual.patch_size[0],
        "projection_dim": visual.proj.shape[1],
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=text["projection_dim"])


def _layer_norm(prefix: str, norm: torch.nn.LayerNorm) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": norm.weight, f"{prefix}.bias": norm.bias}


def _blocks(blocks: torch.nn.ModuleList, prefix: str) -> dict[str, torch.Tensor]:
    """One tower's residual blocks in transformers naming."""
    out = {}
    for i, block in enumerate(blocks):
        params = block.state_dict()
        layer = f"{prefix}.encoder.layers.{i}"
        for kind in ("weight", "bias"):
            # nn.MultiheadAttention stacks q, k, v in one in_proj; transformers keeps three Linears.
            for name, part in zip("qkv", params[f"attn.in_proj_{kind}"].chunk(3), strict=True):
                out[f"{layer}.self_attn.{name}_proj.{kind}"] = part
            for old, new in _BLOCK_NAMES.items():
                out[f"{layer}.{new}.{kind}"] = params[f"{old}.{kind}"]
    return out


def _hf_state_dict(model: open_clip.CLIP) -> dict[str, torch.Tensor]:
    visual = model.visual
    return {
        "logit_scale": model.logit_scale,
        "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": model.positional_embedding,
        **_layer_norm("text_model.final_layer_norm", model.ln_final),
        "text_projection.weight": model.text_projection.T,
        "vision_model.embeddings.class_embedding": visual.class_embedding,
        "vision_model.embeddings.patch_embedding.weight": visual.conv1.weight,
        "vision_model.embeddings.position_embedding.weight": visual.positional_embedding,
        **_layer_norm("vision_model.pre_layrnorm", visual.ln_pre),
        **_layer_norm("vision_model.post_layernorm", visual.ln_post),
        "visual_projection.weight": visual.proj.T,
        **_blocks(model.transformer.resblocks, "text_model"),
        **_blocks(visual.transformer.resblocks, "vision_model"),
    }


def openclip_to_hf_clip(model: open_clip.CLIP) -> CLIPModel:
    """A transformers CLIPModel (eval mode) holding exactly the weights of an open_clip CLIP model."""
    # Cloned, so the two models never share storage.
    state = {name: tensor.detach().clone() for name, tensor in _hf_state_dict(model).items()}
    # from_pretrained with a state dict skips the random initialisation a plain CLIPModel(config) runs.
    hf_model, info = CLIPModel.from_pretrained(
        None, config=hf_clip_config(model), state_dict=state, output_loading_info=True
    )
    unmapped = {key: names for key, names in info.items() if names}
    if unmapped:
        raise EncoderError(f"open_clip -> transformers CLIP conversion left parameters unmapped: {unmapped}")
    return hf_model.eval()


def _hf_tokenizer(tokenizer: open_clip.tokenizer.SimpleTokenizer) -> CLIPTokenizer:
    """The same byte-level BPE (vocab and merge ranks) as a transformers CLIPTokenizer."""
    # open_clip names the specials <start_of_text>/<end_of_text>; transformers CLIP <|startoftext|>/<|endoftext|>.
    names = {
        tokenizer.decoder[tokenizer.sot_token_id]: "<|startoftext|>",
        tokenizer.decoder[tokenizer.eot_token_id]: "<|endoftext|>",
    }
    vocab = {names.get(token, token): index for token, index in tokenizer.encoder.items()}
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=tokenizer.context_length)


def _hf_image_processor(preprocess_cfg: dict[str, Any]) -> CLIPImageProcessor:
    """A CLIPImageProcessor with open_clip's size, resize mode, interpolation and mean/std."""
    height, width = preprocess_cfg["size"]
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash") or preprocess_cfg.get("interpolation") not in _RESAMPLE:
        raise EncoderError(f"cannot express open_clip preprocessing {preprocess_cfg} as a CLIPImageProcessor")
    shortest = resize_mode == "shortest"
    return CLIPImageProcessor(
        size={"shortest_edge": height} if shortest else {"height": height, "width": width},
        do_center_crop=shortest,
        crop_size={"height": height, "width": width},
        resample=_RESAMPLE[preprocess_cfg["interpolation"]],
        image_mean=list(preprocess_cfg["mean"]),
        image_std=list(preprocess_cfg["std"]),
    )


def export_hf_clip(
    model: open_clip.CLIP, tokenizer: open_clip.tokenizer.SimpleTokenizer, out_dir: str | Path
) -> Path:
    """Write a transformers CLIP directory (weights, config, tokenizer, image processor) for ``hf-clip:<dir>``."""
    out = Path(out_dir)
    openclip_to_hf_clip(model).save_pretrained(out)
    _hf_tokenizer(tokenizer).save_pretrained(out)
    _hf_image_processor(open_clip.get_model_preprocess_cfg(model)).save_pretrained(out)
    return out


def export_hf_clip_setup(arch: str, out_dir: str | Path) -> Path:
    """Write config, tokenizer and image processor (no weights) of open_clip ``arch`` as a transformers
    CLIP directory: what ``hf-clip:<dir>+random-init`` reads."""
    with seeded():
        model = open_clip.create_model(arch, pretrained=None)
    out = Path(out_dir)
    hf_clip_config(model).save_pretrained(out)
    _hf_tokenizer(open_clip.get_tokenizer(arch)).save_pretrained(out)
    _hf_image_processor(open_clip.get_model_preprocess_cfg(model)).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m spatial_probing.encoders.convert OUT_DIR [--arch ViT-B-32]``: an offline hf-clip set-up."""
    parser = argparse.ArgumentParser(description=export_hf_clip_setup.__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--arch", default="ViT-B-32-quickgelu", help="open_clip architecture (default: the "
                        "OpenAI ViT-B/32 variant, QuickGELU, as openai/clip-vit-base-patch32)")
    args = parser.parse_args(argv)
    print(f"wrote {export_hf_clip_setup(args.arch, args.out_dir)} (config, tokenizer, image processor; no weights)")


if __name__ == "__main__":
    main()
