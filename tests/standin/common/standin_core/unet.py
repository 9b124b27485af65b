# The parts of the SD UNet that Forge main and reForge share, and its block layout.
#   Forge main  backend/nn/unet.py                                   @ dfdcbab6
#   reForge     ldm_patched/ldm/modules/attention.py                 @ 3b56b268
#               ldm_patched/ldm/modules/diffusionmodules/openaimodel.py
# The layout loop (input blocks per level, a Downsample between levels, middle ResBlock-Transformer-
# ResBlock, output blocks with an Upsample closing every level but the last), the transformer depth
# lists popped front (input) / back (output), and the head arithmetic are those of the real code.
# What differs between the forks (patch call sites, extra_options keys, attention call, block
# modifiers) lives in each flavour's own classes, which subclass or parametrise these.
# One liberty: GroupNorm's group count is a config field (the real code always uses 32) so that the
# SDXL-like toy can keep the real head counts with tiny channel widths.
import math

import torch
from torch import nn


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * torch.nn.functional.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, dim_out=None, mult=4, glu=False):
        super().__init__()
        inner = int(dim * mult)
        project_in = GEGLU(dim, inner) if glu else nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(0.0), nn.Linear(inner, dim_out or dim))

    def forward(self, x):
        return self.net(x)


class CrossAttentionCore(nn.Module):
    """to_q/to_k/to_v without bias, to_out = Linear + Dropout; subclasses say how attention is called."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim if context_dim is not None else query_dim
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def project(self, x, context=None, value=None):
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(value if value is not None else context)
        return q, k, v


class BasicTransformerBlockCore(nn.Module):
    """The patch call sites of BasicTransformerBlock, identical in both forks.

    Subclasses set RESIDUAL_INPLACE, ATTENTION_CLASS and implement extra_options_for() and call_attention().
    """

    RESIDUAL_INPLACE = True
    ATTENTION_CLASS = CrossAttentionCore

    def __init__(self, dim, n_heads, d_head, context_dim=None, gated_ff=True, disable_self_attn=False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = self.ATTENTION_CLASS(dim, context_dim if disable_self_attn else None, n_heads, d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = self.ATTENTION_CLASS(dim, context_dim, n_heads, d_head)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dim_out=dim, glu=gated_ff)
        self.norm3 = nn.LayerNorm(dim)
        self.n_heads, self.d_head = n_heads, d_head
        self.is_res = True

    def extra_options_for(self, transformer_options):
        raise NotImplementedError

    def call_attention(self, attn, n, context, value, extra_options):
        raise NotImplementedError

    def _add(self, x, n):
        if self.RESIDUAL_INPLACE:
            x += n
            return x
        return n + x

    @staticmethod
    def _lookup_replace(table, block, block_index):
        """(block, number, depth index) first, then (block, number); None when neither is registered."""
        key = (block[0], block[1], block_index) if block is not None else None
        if key not in table:
            key = block
        return key if key in table else None

    def _attention_site(self, which, attn, n, context, value, extra_options, replaces, block, block_index):
        table = replaces.get(which, {})
        key = self._lookup_replace(table, block, block_index)
        if key is None:
            return self.call_attention(attn, n, context, value, extra_options)
        # a replace receives projected q/k/v; K/V come from n itself for plain self-attention
        if context is None:
            context, value = n, n
        elif value is None:
            value = context
        q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(value)
        return attn.to_out(table[key](q, k, v, extra_options))

    def forward(self, x, context=None, transformer_options={}):
        extra_options = {}
        patches, replaces = {}, {}
        for key, value in transformer_options.items():
            if key == "patches":
                patches = value
            elif key == "patches_replace":
                replaces = value
            else:
                extra_options[key] = value
        extra_options.update(self.extra_options_for(transformer_options))
        block = transformer_options.get("block", None)
        block_index = transformer_options.get("block_index", 0)

        n = self.norm1(x)
        context_attn1 = context if self.disable_self_attn else None
        value_attn1 = None
        if "attn1_patch" in patches:
            if context_attn1 is None:
                context_attn1 = n
            value_attn1 = context_attn1
            for patch in patches["attn1_patch"]:
                n, context_attn1, value_attn1 = patch(n, context_attn1, value_attn1, extra_options)
        n = self._attention_site("attn1", self.attn1, n, context_attn1, value_attn1, extra_options, replaces,
                                 block, block_index)
        for patch in patches.get("attn1_output_patch", ()):
            n = patch(n, extra_options)
        x = self._add(x, n)
        for patch in patches.get("middle_patch", ()):
            x = patch(x, extra_options)

        n = self.norm2(x)
        context_attn2, value_attn2 = context, None
        if "attn2_patch" in patches:
            value_attn2 = context_attn2
            for patch in patches["attn2_patch"]:
                n, context_attn2, value_attn2 = patch(n, context_attn2, value_attn2, extra_options)
        n = self._attention_site("attn2", self.attn2, n, context_attn2, value_attn2, extra_options, replaces,
                                 block, block_index)
        for patch in patches.get("attn2_output_patch", ()):
            n = patch(n, extra_options)
        x = self._add(x, n)

        skip = x
        x = self.ff(self.norm3(x))
        return self._add(x, skip)


class SpatialTransformerCore(nn.Module):
    BLOCK_CLASS = BasicTransformerBlockCore

    def __init__(self, in_channels, n_heads, d_head, depth=1, context_dim=None, disable_self_attn=False,
                 use_linear=False, norm_groups=32):
        super().__init__()
        self.in_channels = in_channels
        inner = n_heads * d_head
        self.norm = nn.GroupNorm(norm_groups, in_channels, eps=1e-6, affine=True)
        self.use_linear = use_linear
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [self.BLOCK_CLASS(inner, n_heads, d_head, context_dim=context_dim, disable_self_attn=disable_self_attn)
             for _ in range(depth)])
        self.proj_out = nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1)

    def before_blocks(self, x, transformer_options):
        """Hook: reForge records activations_shape here."""

    def forward(self, x, context=None, transformer_options={}):
        contexts = context if isinstance(context, list) else [context] * len(self.transformer_blocks)
        b, c, h, w = x.shape
        self.before_blocks(x, transformer_options)
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.movedim(1, 3).flatten(1, 2).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            x = block(x, context=contexts[i], transformer_options=transformer_options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, x.shape[-1]).movedim(3, 1).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TimestepBlock(nn.Module):
    pass


class Upsample(nn.Module):
    """Nearest x2, or to output_shape (the skip's size) when given; then a 3x3 conv."""

    def __init__(self, channels, use_conv=True, out_channels=None):
        super().__init__()
        self.channels, self.out_channels = channels, out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(self.channels, self.out_channels, 3, padding=1)

    def forward(self, x, output_shape=None):
        assert x.shape[1] == self.channels
        size = [x.shape[2] * 2, x.shape[3] * 2]
        if output_shape is not None:
            size = [output_shape[2], output_shape[3]]
        x = torch.nn.functional.interpolate(x, size=size, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """3x3 conv, stride 2, padding 1: odd sizes round up (ceil halving)."""

    def __init__(self, channels, use_conv=True, out_channels=None):
        super().__init__()
        self.channels, self.out_channels = channels, out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(self.channels, self.out_channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.op(x)


class ResBlockCore(TimestepBlock):
    """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-dropout-conv, skip (1x1 conv when channels change).

    GROUP_NORM_WRAPPER: Forge main lets transformer_options["group_norm_wrapper"] run the norms; reForge not.
    """

    GROUP_NORM_WRAPPER = False

    def __init__(self, channels, emb_channels, out_channels=None, norm_groups=32):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.in_layers = nn.Sequential(nn.GroupNorm(norm_groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, self.out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(norm_groups, self.out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else nn.Conv2d(channels, self.out_channels, 1))

    def _norm(self, layers, x, transformer_options):
        wrapper = (transformer_options or {}).get("group_norm_wrapper") if self.GROUP_NORM_WRAPPER else None
        if wrapper is None:
            return layers(x)
        return layers[1:](wrapper(layers[0], x, transformer_options))

    def forward(self, x, emb, transformer_options=None):
        h = self._norm(self.in_layers, x, transformer_options)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.ndim < h.ndim:
            emb_out = emb_out[..., None]
        h = self._norm(self.out_layers, h + emb_out, transformer_options)
        return self.skip_connection(x) + h


# --- layout --------------------------------------------------------------------------------------

def _heads(ch, num_heads, num_head_channels):
    if num_head_channels == -1:
        return num_heads, ch // num_heads
    return ch // num_head_channels, num_head_channels


def build_layout(model, cfg, parts):
    """Create time_embed, label_emb, input_blocks, middle_block, output_blocks, out on ``model``.

    ``parts`` names the flavour's classes: sequential, resblock, transformer, downsample, upsample.
    """
    mc = cfg["model_channels"]
    groups = cfg.get("norm_groups", 32)
    emb_dim = mc * 4
    levels = len(cfg["channel_mult"])
    num_res = cfg["num_res_blocks"]
    num_res = [num_res] * levels if isinstance(num_res, int) else list(num_res)
    depth_in = list(cfg["transformer_depth"])
    depth_out = list(cfg["transformer_depth_output"])
    num_heads, num_head_channels = cfg.get("num_heads", -1), cfg.get("num_head_channels", -1)
    context_dim, use_linear = cfg.get("context_dim"), cfg.get("use_linear_in_transformer", False)
    seq, res, st = parts["sequential"], parts["resblock"], parts["transformer"]

    def transformer(ch, depth):
        heads, dim_head = _heads(ch, num_heads, num_head_channels)
        return st(ch, heads, dim_head, depth=depth, context_dim=context_dim, use_linear=use_linear, norm_groups=groups)

    model.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
    if cfg.get("num_classes") == "sequential":
        model.label_emb = nn.Sequential(nn.Sequential(nn.Linear(cfg["adm_in_channels"], emb_dim), nn.SiLU(),
                                                      nn.Linear(emb_dim, emb_dim)))
    model.input_blocks = nn.ModuleList([seq(nn.Conv2d(cfg["in_channels"], mc, 3, padding=1))])
    skip_channels, ch = [mc], mc
    for level, mult in enumerate(cfg["channel_mult"]):
        for _ in range(num_res[level]):
            layers = [res(ch, emb_dim, mult * mc, norm_groups=groups)]
            ch = mult * mc
            depth = depth_in.pop(0)
            if depth > 0:
                layers.append(transformer(ch, depth))
            model.input_blocks.append(seq(*layers))
            skip_channels.append(ch)
        if level != levels - 1:
            model.input_blocks.append(seq(parts["downsample"](ch, True, out_channels=ch)))
            skip_channels.append(ch)
    middle = [res(ch, emb_dim, None, norm_groups=groups)]
    if cfg["transformer_depth_middle"] >= 0:
        middle += [transformer(ch, cfg["transformer_depth_middle"]), res(ch, emb_dim, None, norm_groups=groups)]
    model.middle_block = seq(*middle)
    model.output_blocks = nn.ModuleList([])
    for level, mult in list(enumerate(cfg["channel_mult"]))[::-1]:
        for i in range(num_res[level] + 1):
            layers = [res(ch + skip_channels.pop(), emb_dim, mc * mult, norm_groups=groups)]
            ch = mc * mult
            depth = depth_out.pop()
            if depth > 0:
                layers.append(transformer(ch, depth))
            if level and i == num_res[level]:
                layers.append(parts["upsample"](ch, True, out_channels=ch))
            model.output_blocks.append(seq(*layers))
    model.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(mc, cfg["out_channels"], 3, padding=1))


def seeded_init_(module, seed):
    """Deterministic weights from one generator (float32), small enough to keep activations tame."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            elif param.ndim == 1:          # norm weights
                param.copy_(1.0 + torch.randn(param.shape, generator=generator) * 0.02)
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
    return module


# Tiny configurations with the real layouts (same keys as the real unet_config / diffusers config).
UNET_CONFIGS = {
    "sd15": dict(in_channels=4, model_channels=32, out_channels=4, num_res_blocks=2, channel_mult=(1, 2, 4, 4),
                 num_heads=8, num_head_channels=-1, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 context_dim=16, use_linear_in_transformer=False, num_classes=None, adm_in_channels=None,
                 norm_groups=32),
    "sd2": dict(in_channels=4, model_channels=32, out_channels=4, num_res_blocks=2, channel_mult=(1, 2, 4, 4),
                num_heads=-1, num_head_channels=8, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                context_dim=16, use_linear_in_transformer=True, num_classes=None, adm_in_channels=None,
                norm_groups=32),
    "sdxl": dict(in_channels=4, model_channels=20, out_channels=4, num_res_blocks=2, channel_mult=(1, 2, 4),
                 num_heads=-1, num_head_channels=4, transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 context_dim=32, use_linear_in_transformer=True, num_classes="sequential", adm_in_channels=68,
                 norm_groups=4),
}
