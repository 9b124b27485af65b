import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The CI machine has 2 cores shared by everything: keep torch to one thread per test process.
torch.set_num_threads(1)


@pytest.fixture
def unmasked_sdpa(monkeypatch):
    """Fails any SDPA call that gets a mask (a mask moves CUDA off the flash kernel); yields the query
    shapes of the calls seen."""
    import torch.nn.functional as F

    seen, sdpa = [], F.scaled_dot_product_attention

    def checked(q, k, v, attn_mask=None, *args, **kwargs):
        assert attn_mask is None, "a mask reached the attention kernel"
        seen.append(tuple(q.shape))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", checked)
    return seen
