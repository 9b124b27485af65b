# Mirrors reForge ldm_patched/ldm/modules/attention.py @ 3b56b268ad9158ee8b30900973b6ccda4ec22241.
# Differences from Forge main kept here: extra_options gets attn_precision too; CrossAttention is called
# without transformer_options and goes through the module-global optimized_attention (looked up at call
# time, so replacing ldm_patched.ldm.modules.attention.optimized_attention takes effect); residuals are
# not in place; SpatialTransformer records transformer_options["activations_shape"].
from standin_core import unet as core
from standin_core.attention import heads_attention
from standin_core.unet import FeedForward, GEGLU  # noqa: F401 (real names)


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False):
    return heads_attention(q, k, v, heads, mask=mask, skip_reshape=skip_reshape,
                           skip_output_reshape=skip_output_reshape, expand_mask_dims=True)


attention_basic = attention_pytorch   # same result on CPU; the real basic kernel is a slower equivalent
optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention


def default(val, d):
    return val if val is not None else d


class CrossAttention(core.CrossAttentionCore):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, attn_precision=None):
        super().__init__(query_dim, context_dim, heads, dim_head)
        self.attn_precision = attn_precision

    def forward(self, x, context=None, value=None, mask=None):
        q, k, v = self.project(x, context, value)
        if mask is None:
            out = optimized_attention(q, k, v, self.heads, attn_precision=self.attn_precision)
        else:
            out = optimized_attention_masked(q, k, v, self.heads, mask, attn_precision=self.attn_precision)
        return self.to_out(out)


class BasicTransformerBlock(core.BasicTransformerBlockCore):
    RESIDUAL_INPLACE = False
    ATTENTION_CLASS = CrossAttention
    attn_precision = None

    def extra_options_for(self, transformer_options):
        return {"n_heads": self.n_heads, "dim_head": self.d_head, "attn_precision": self.attn_precision}

    def call_attention(self, attn, n, context, value, extra_options):
        return attn(n, context=context, value=value)


class SpatialTransformer(core.SpatialTransformerCore):
    BLOCK_CLASS = BasicTransformerBlock

    def before_blocks(self, x, transformer_options):
        transformer_options["activations_shape"] = list(x.shape)
