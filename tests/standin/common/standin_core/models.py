# Toy model families shared by both flavours: tiny UNet configs with the real layouts, the toy CLIPs and the
# SDXL conditioning assembly. Mirrors the behaviour of
#   Forge main  backend/diffusion_engine/sd15.py, sd20.py, sdxl.py get_learned_conditioning   @ dfdcbab6
#   reForge     modules/sd_hijack_clip.py + sgm conditioner (same outputs)                     @ 3b56b268
# SD1.5/SD2: [B, 77k, ctx]. SDXL: {"crossattn": cat(clip_l penultimate, clip_g penultimate) on the last dim,
# "vector": cat(clip_g pooled (projected), six size embeddings [h, w, crop_top, crop_left, target_h,
# target_w])}, all zeros for an all-empty negative prompt. Widths are tiny; the layout is real.
import copy

import torch

from standin_core.text import TextProcessingEngine, ToyTextEncoder, ToyTokenizer
from standin_core.unet import UNET_CONFIGS, seeded_init_, timestep_embedding

FAMILIES = ("sd15", "sd2", "sdxl")
SIZE_EMBED_DIM = 8          # real: 256 per size value
CLIP_L_WIDTH = 12           # SDXL clip_l hidden width (real 768)
CLIP_G_WIDTH = 20           # SDXL clip_g hidden width and pooled width (real 1280)


def unet_config(family):
    if family not in UNET_CONFIGS:
        raise ValueError(f"unknown model family {family!r}; the stand-in has {sorted(UNET_CONFIGS)}")
    return copy.deepcopy(UNET_CONFIGS[family])


# {(family, seed): state_dict}; the harness swaps in a dict that outlives flavour switches. Both flavours
# build the same parameter names in the same order, so one seed gives both flavours the same weights.
weight_cache = {}


def build_unet(unet_class, family, seed):
    with torch.device("meta"):          # skip torch's default init: every weight is set below
        model = unet_class(**unet_config(family))
    model = model.to_empty(device="cpu")
    key = (family, seed)
    if key in weight_cache:
        model.load_state_dict(weight_cache[key])
    else:
        seeded_init_(model, seed)
        weight_cache[key] = {k: v.clone() for k, v in model.state_dict().items()}
    return model.eval().requires_grad_(False)


class ToyClipPart(torch.nn.Module):
    """What cond_stage_model.clip_l (Forge main IntegratedCLIP, reForge SDClipModel) is: a module whose
    ``transformer`` is the text model; CLIP(...).tokenizer.clip_l holds the tokenizer."""

    def __init__(self, tokenizer, transformer):
        super().__init__()
        self.tokenizer, self.transformer = tokenizer, transformer


class ToyCLIP:
    """forge_objects.clip: .tokenizer.<name> and .cond_stage_model.<name> per text encoder; cond_stage_model
    is a module (Forge main JointTextEncoder, a ModuleDict), so its state dict has the real weight keys
    ("clip_l.transformer.text_model.encoder.layers.0.self_attn.v_proj.weight")."""

    def __init__(self, parts):
        self.tokenizer = type("Tokenizers", (), {})()
        self.cond_stage_model = torch.nn.ModuleDict(parts)
        for name, part in parts.items():
            setattr(self.tokenizer, name, part.tokenizer)
        self.patcher = None


def text_engines(family, seed):
    """{name: TextProcessingEngine} with the real clip-skip / layer-norm / pooled settings per family."""
    if family == "sdxl":
        tok_l, tok_g = ToyTokenizer(), ToyTokenizer(pad_token_id=0)
        enc_l = ToyTextEncoder(tok_l.vocab_size, CLIP_L_WIDTH, seed + 101).requires_grad_(False)
        enc_g = ToyTextEncoder(tok_g.vocab_size, CLIP_G_WIDTH, seed + 102, projection_dim=CLIP_G_WIDTH).requires_grad_(False)
        return {"clip_l": TextProcessingEngine(tok_l, enc_l, clip_skip=2, minimal_clip_skip=2, final_layer_norm=False),
                "clip_g": TextProcessingEngine(tok_g, enc_g, clip_skip=2, minimal_clip_skip=2, final_layer_norm=False,
                                               return_pooled=True)}
    width = unet_config(family)["context_dim"]
    tok = ToyTokenizer(pad_token_id=0 if family == "sd2" else None)
    enc = ToyTextEncoder(tok.vocab_size, width, seed + 101).requires_grad_(False)
    return {("clip_h" if family == "sd2" else "clip_l"): TextProcessingEngine(tok, enc)}


def toy_clip(engines):
    return ToyCLIP({name: ToyClipPart(e.tokenizer, e.text_encoder) for name, e in engines.items()})


def size_embedding(value):
    return timestep_embedding(torch.Tensor([value]), SIZE_EMBED_DIM)


@torch.no_grad()
def learned_conditioning(family, engines, prompts, crop_left=0, crop_top=0):
    """What sd_model.get_learned_conditioning(prompts) returns for this family."""
    if family != "sdxl":
        return next(iter(engines.values()))(prompts)
    cond_l = engines["clip_l"](prompts)
    cond_g, pooled = engines["clip_g"](prompts)
    width = getattr(prompts, "width", 1024) or 1024
    height = getattr(prompts, "height", 1024) or 1024
    sizes = [height, width, crop_top, crop_left, height, width]
    flat = torch.flatten(torch.cat([size_embedding(v) for v in sizes])).unsqueeze(0).repeat(pooled.shape[0], 1)
    if getattr(prompts, "is_negative_prompt", False) and all(x == "" for x in prompts):
        pooled, cond_l, cond_g = torch.zeros_like(pooled), torch.zeros_like(cond_l), torch.zeros_like(cond_g)
    return {"crossattn": torch.cat([cond_l, cond_g], dim=2), "vector": torch.cat([pooled, flat.to(pooled)], dim=1)}


class FluxLikeModel(torch.nn.Module):
    """A transformer-style diffusion model without UNet blocks (stands for Flux / SD3 / Chroma)."""

    def __init__(self, seed, context_dim=16):
        super().__init__()
        self.config = {"in_channels": 4, "context_dim": context_dim}
        self.img_in = torch.nn.Conv2d(4, 4, 1)
        self.txt_in = torch.nn.Linear(context_dim, 4)
        seeded_init_(self, seed)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return self.img_in(x) + self.txt_in(context.mean(dim=1))[:, :, None, None]
