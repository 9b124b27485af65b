# Mirrors Forge main backend/attention.py @ dfdcbab6 (the pytorch path: attention_function is
# attention_pytorch there when PyTorch attention is enabled, as on CPU with --attention-pytorch).
from standin_core.attention import heads_attention


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    return heads_attention(q, k, v, heads, mask=mask, skip_reshape=skip_reshape)


attention_function = attention_pytorch
