"""Attention inside windows given by index maps (MSW-MSA windows, Near-sighted tiles).

A window layout is derived from the technique's own geometry functions (``tile``, ``partition``,
``strided_sample``) applied to token ids, so it follows them exactly: ``ids_through(fn, n)`` runs
``fn`` on the ids 0..n-1 and reads back which token landed where (-1 = padding). Windows whose valid
query and key positions coincide form one class, run as one unmasked SDPA over gathered tokens; padding
never enters a kernel, so no mask is needed. Layouts depend only on sizes, so callers cache them per
(geometry, device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .core import GatherCall, gathered_attention


class WindowLayout(NamedTuple):
    calls: tuple[GatherCall, ...]   # one per class of windows with equal valid positions
    inverse: torch.Tensor | None    # [N] position of each token's output among the calls' queries


def ids_through(fn: Callable[[torch.Tensor], torch.Tensor], n_tokens: int) -> torch.Tensor:
    """``fn`` applied to the token ids as a ``[1, n, 1]`` tensor, returned ``[rows, m]`` with -1 where
    ``fn`` padded (it pads with zeros, so the ids go through shifted by one)."""
    ids = torch.arange(1, n_tokens + 1).view(1, n_tokens, 1)
    out = fn(ids)
    return out.reshape(out.shape[0], -1) - 1


def window_layout(query_ids: torch.Tensor, key_ids: torch.Tensor, value_ids: torch.Tensor,
                  device: torch.device) -> WindowLayout:
    """The layout of windows given by id maps ``[windows, slots]`` (-1 = empty slot): window t's queries are
    the tokens ``query_ids[t]`` (each token exactly once over all windows), its keys / values the source
    positions in ``key_ids[t]`` / ``value_ids[t]``. Maps passed as the same tensor share one index tensor.
    Layouts are cached by their callers: keep them small (they live on the device)."""
    used = torch.cat([query_ids >= 0, key_ids >= 0, value_ids >= 0], 1)
    patterns, which = torch.unique(used, dim=0, return_inverse=True)
    n_q, n_k = query_ids.shape[1], key_ids.shape[1]
    calls, order = [], []
    for c, pattern in enumerate(patterns):
        windows = torch.nonzero(which == c).flatten()
        queries = query_ids[windows][:, pattern[:n_q]].flatten()
        order.append(queries)
        on_device = {id(query_ids): queries.to(device)}          # one tensor per distinct id map
        for ids, slots in ((key_ids, pattern[n_q:n_q + n_k]), (value_ids, pattern[n_q + n_k:])):
            if id(ids) not in on_device:
                on_device[id(ids)] = ids[windows][:, slots].flatten().to(device)
        calls.append(GatherCall(len(windows), on_device[id(query_ids)], on_device[id(key_ids)],
                                on_device[id(value_ids)]))
    order = torch.cat(order)
    if not torch.equal(torch.sort(order).values, torch.arange(len(order))):
        raise ValueError("the windows' queries must hold every token exactly once")
    inverse = None
    if not torch.equal(order, torch.arange(len(order))):
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        inverse = inverse.to(device)
    return WindowLayout(tuple(calls), inverse)


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                       layout: WindowLayout) -> torch.Tensor:
    """Attention of every token of q ``[B, N, C]`` over its window's keys / values (positions in ``k`` /
    ``v``, the key / value sources), returned in q's layout."""
    out, _ = gathered_attention(q, k, v, heads, layout.calls)
    out = out.flatten(2)
    return out if layout.inverse is None else out.index_select(1, layout.inverse)
