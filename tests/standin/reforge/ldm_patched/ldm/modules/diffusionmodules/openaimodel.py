# Mirrors reForge ldm_patched/ldm/modules/diffusionmodules/openaimodel.py
# @ 3b56b268ad9158ee8b30900973b6ccda4ec22241: forward_timestep_embed (no block_inner_modifiers;
# "forward_timestep_embed_patch" = [(layer class, handler)] for non-timestep layers such as Downsample),
# UNetModel._forward with "emb_patch", input_block_patch / _after_skip, output_block_patch, and NO block
# modifiers (add_block_modifier exists on the patcher but nothing here runs them).
import torch
from torch import nn

from ldm_patched.ldm.modules.attention import SpatialTransformer
from standin_core import unet as core
from standin_core.unet import TimestepBlock, Upsample, Downsample, timestep_embedding  # noqa: F401 (real names)


class ResBlock(core.ResBlockCore):
    GROUP_NORM_WRAPPER = False

    def forward(self, x, emb):
        return super().forward(x, emb)


def forward_timestep_embed(ts, x, emb, context=None, transformer_options={}, output_shape=None, time_context=None,
                           num_video_frames=None, image_only_indicator=None):
    for layer in ts:
        if isinstance(layer, TimestepBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer):
            x = layer(x, context, transformer_options)
            if "transformer_index" in transformer_options:
                transformer_options["transformer_index"] += 1
        elif isinstance(layer, Upsample):
            x = layer(x, output_shape=output_shape)
        else:
            handlers = transformer_options.get("patches", {}).get("forward_timestep_embed_patch", [])
            handler = next((h for cls, h in handlers if isinstance(layer, cls)), None)
            if handler is not None:
                x = handler(layer, x, emb, context, transformer_options, output_shape, time_context, num_video_frames,
                            image_only_indicator)
                continue
            x = layer(x)
    return x


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, *args, **kwargs):
        return forward_timestep_embed(self, *args, **kwargs)


PARTS = dict(sequential=TimestepEmbedSequential, resblock=ResBlock, transformer=SpatialTransformer,
             downsample=Downsample, upsample=Upsample)


class UNetModel(nn.Module):
    def __init__(self, image_size=None, dtype=torch.float32, device=None, operations=None, **config):
        super().__init__()
        self.dtype = dtype
        self.in_channels, self.out_channels = config["in_channels"], config["out_channels"]
        self.model_channels = config["model_channels"]
        self.num_classes = config.get("num_classes")
        self.predict_codebook_ids = False
        core.build_layout(self, config, PARTS)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return self._forward(x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        patches = transformer_options.get("patches", {})
        assert (y is not None) == (self.num_classes is not None), \
            "must specify y if and only if the model is class-conditional"
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        for patch in patches.get("emb_patch", ()):
            emb = patch(emb, self.model_channels, transformer_options)
        if self.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for number, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", number)
            h = forward_timestep_embed(module, h, emb, context, transformer_options)
            for patch in patches.get("input_block_patch", ()):
                h = patch(h, transformer_options)
            hs.append(h)
            for patch in patches.get("input_block_patch_after_skip", ()):
                h = patch(h, transformer_options)
        transformer_options["block"] = ("middle", 0)
        h = forward_timestep_embed(self.middle_block, h, emb, context, transformer_options)
        for number, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", number)
            hsp = hs.pop()
            for patch in patches.get("output_block_patch", ()):
                h, hsp = patch(h, hsp, transformer_options)
            h = torch.cat([h, hsp], dim=1)
            del hsp
            output_shape = hs[-1].shape if hs else None
            h = forward_timestep_embed(module, h, emb, context, transformer_options, output_shape)
        h = h.type(x.dtype)
        return self.out(h)
