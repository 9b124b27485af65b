# Mirrors the pytorch attention kernel both forks use on CPU:
#   Forge main  backend/attention.py attention_pytorch                       @ dfdcbab6
#   reForge     ldm_patched/ldm/modules/attention.py attention_pytorch       @ 3b56b268
# Both split heads with q's batch size, so a K/V batch different from q's is regrouped silently
# (exactly as the real view() does); reForge also accepts 2-D/3-D masks by adding batch/head dims.
import torch
import torch.nn.functional as F


def heads_attention(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False,
                    expand_mask_dims=False):
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None and expand_mask_dims:
        while mask.ndim < 4:
            mask = mask.unsqueeze(0 if mask.ndim == 2 else 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)
