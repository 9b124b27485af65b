# Mirrors Forge main backend/nn/unet.py @ dfdcbab685e57677014f05a3309b48cc87383167
# (TimestepEmbedSequential with block_inner_modifiers, BasicTransformerBlock._forward patch sites,
# SpatialTransformer, IntegratedUNet2DConditionModel.forward with block_modifiers and the
# input/output block patches). Shared pieces come from standin_core.unet; the real class names and
# call signatures are kept here. `config` holds the constructor arguments like diffusers' ConfigMixin.
import torch
from torch import nn

from backend.attention import attention_function
from standin_core import unet as core
from standin_core.unet import (FeedForward, GEGLU, TimestepBlock, Upsample, Downsample,  # noqa: F401 (real names)
                               timestep_embedding)


class CrossAttention(core.CrossAttentionCore):
    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):
        q, k, v = self.project(x, context, value)
        return self.to_out(attention_function(q, k, v, self.heads, mask))


class BasicTransformerBlock(core.BasicTransformerBlockCore):
    RESIDUAL_INPLACE = True
    ATTENTION_CLASS = CrossAttention

    def extra_options_for(self, transformer_options):
        return {"n_heads": self.n_heads, "dim_head": self.d_head}

    def call_attention(self, attn, n, context, value, extra_options):
        return attn(n, context=context, value=value, transformer_options=extra_options)


class SpatialTransformer(core.SpatialTransformerCore):
    BLOCK_CLASS = BasicTransformerBlock


class ResBlock(core.ResBlockCore):
    GROUP_NORM_WRAPPER = True


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb, context=None, transformer_options={}, output_shape=None):
        inner_modifiers = transformer_options.get("block_inner_modifiers", [])
        for layer_index, layer in enumerate(self):
            for modifier in inner_modifiers:
                x = modifier(x, "before", layer, layer_index, self, transformer_options)
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb, transformer_options)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
                if "transformer_index" in transformer_options:
                    transformer_options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                x = layer(x, output_shape=output_shape)
            else:
                x = layer(x)
            for modifier in inner_modifiers:
                x = modifier(x, "after", layer, layer_index, self, transformer_options)
        return x


PARTS = dict(sequential=TimestepEmbedSequential, resblock=ResBlock, transformer=SpatialTransformer,
             downsample=Downsample, upsample=Upsample)


class IntegratedUNet2DConditionModel(nn.Module):
    config_name = "config.json"

    def __init__(self, **config):
        super().__init__()
        self.config = dict(config)
        self.in_channels, self.out_channels = config["in_channels"], config["out_channels"]
        self.model_channels = config["model_channels"]
        self.num_classes = config.get("num_classes")
        core.build_layout(self, config, PARTS)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        patches = transformer_options.get("patches", {})
        block_modifiers = transformer_options.get("block_modifiers", [])
        assert (y is not None) == (self.num_classes is not None)

        def modify(h, when):
            for modifier in block_modifiers:
                h = modifier(h, when, transformer_options)
            return h

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if self.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for number, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", number)
            h = modify(h, "before")
            h = module(h, emb, context, transformer_options)
            h = modify(h, "after")
            for patch in patches.get("input_block_patch", ()):
                h = patch(h, transformer_options)
            hs.append(h)
            for patch in patches.get("input_block_patch_after_skip", ()):
                h = patch(h, transformer_options)
        transformer_options["block"] = ("middle", 0)
        h = modify(h, "before")
        h = self.middle_block(h, emb, context, transformer_options)
        h = modify(h, "after")
        for number, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", number)
            hsp = hs.pop()
            for patch in patches.get("output_block_patch", ()):
                h, hsp = patch(h, hsp, transformer_options)
            h = torch.cat([h, hsp], dim=1)
            del hsp
            output_shape = hs[-1].shape if hs else None
            h = modify(h, "before")
            h = module(h, emb, context, transformer_options, output_shape)
            h = modify(h, "after")
        transformer_options["block"] = ("last", 0)
        h = modify(h, "before")
        if "group_norm_wrapper" in transformer_options:
            h = self.out[1:](transformer_options["group_norm_wrapper"](self.out[0], h, transformer_options))
        else:
            h = self.out(h)
        h = modify(h, "after")
        return h.type(x.dtype)
