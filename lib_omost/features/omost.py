"""Omost in a generation: the accordion's parameters, the regional prompt chunks, the context swap and the
regional cross-attention stage.

A canvas becomes one long conditioning: every region's greedy sub-prompt chunks (global first, then far to
near), each encoded as one 77-token CLIP chunk and concatenated, with a token -> region map. For every UNet
call the rows of positive-prompt chunks get this context in place of the prompt box's (``swap_context``;
uncond rows keep the negative prompt, followed by the canvas's own negatives when regions have them, with
their own token -> region map: the WebUI's negative prompt is the global region's). One UNet call needs one
context length: both are repeated to their
least common multiple, which leaves attention unchanged, while that is at most 4 x the longer; beyond that the
shorter is repeated whole as often as it fits and filled up with the empty prompt's tokens (A1111's "pad
prompt/negative prompt to be same length"), so the context never exceeds 4 x the longer one
(``common_length``, ``fit_tokens``). The attn2 stage then restricts each pixel to its regions' tokens with the chosen
method until ``end percent`` of sampling; after that the whole canvas text is plain cross-attention.

Prediction blending (``BLEND``) works on the predictions instead: every region becomes its own masked cond
(its own chunks as context) through the WebUI's masked-condition support, one UNet row per region, and the
WebUI averages the predictions by mask (``blend_weights``); with canvas negatives the uncond is masked the
same way, each region's being the WebUI's negative prompt followed by the global and its own negatives.

The prompt box: with "append to global" its text is added to the global region as its last sub-prompt
(so it reaches every pixel); "ignore" leaves it out (stated in the infotext).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from lib_omost.attention.plan import ATTN2, AttnCall
from lib_omost.attention.regional import (attention_by_row_groups, attention_couple, couple_layout,
                                          dense_cross_layout, densediffusion_attention, omost_attention,
                                          omost_layout)
from lib_omost.canvas import Canvas, CanvasError, canvas_to_json, example_canvas, ordered_regions, region_masks
from lib_omost.model_info import ModelInfo
from lib_omost.params import BOOL, CHOICE, FLOAT, JSON, Feature, Param
from lib_omost.canvas.prompt_tree import RegionPrompt, canvas_prompts, normalize_prompt
from lib_omost.prompt_chunks import region_chunks

OMOST, COUPLE, OVERLAY, DENSE, BLEND = ("Omost score manipulation", "Attention couple",
                                        "Attention couple (overlay)", "DenseDiffusion", "Prediction blending")
METHODS = (OMOST, COUPLE, OVERLAY, DENSE, BLEND)
INITIAL_LATENT_MAX = 0.9
APPEND, IGNORE = "append to global region", "ignore"
CHUNK_TOKENS = 77                   # one CLIP chunk
MAX_CONTEXT_CHUNKS = 256            # per canvas: ~9 x a long real answer (28 chunks for 4 detailed regions)
MAX_CONTEXT_REPEAT = 4              # contexts of one UNet call are repeated to their LCM up to 4 x the longer
UNCOND_TOKENS = "omost_uncond_tokens"   # transformer_options: tokens of the WebUI's negative prompt this step

FEATURE = Feature("omost", "Omost", (
    Param("canvas", "Canvas", JSON, json.dumps(canvas_to_json(example_canvas()), ensure_ascii=False, indent=2),
          xyz=False,
          help="The canvas as JSON (ours or the ComfyUI_omost list form); the editor and the chat write it."),
    Param("method", "Method", CHOICE, OMOST, choices=METHODS),
    Param("strength", "Strength", FLOAT, 1.0, 0.0, 1.0, 0.05,
          help="0 = plain attention over the whole canvas text, 1 = the method's full regional effect."),
    Param("end_percent", "End percent", FLOAT, 1.0, 0.0, 1.0, 0.01,
          help="Regional masks act for this first part of sampling, then plain attention over the canvas text."),
    Param("prompt_box", "Prompt box", CHOICE, APPEND, choices=(APPEND, IGNORE),
          help="What happens to the txt2img prompt box while Omost is on."),
    Param("hires_regions", "Regions in hires pass", BOOL, True,
          help="Off: the hires pass sees the canvas text without regional masks."),
    Param("initial_latent", "Initial latent strength", FLOAT, 0.0, 0.0, INITIAL_LATENT_MAX, 0.01,
          help="txt2img: 0 = start from noise; above 0, start from the blurred canvas colours, like img2img "
               "with denoising 1 - strength but with the same number of steps."),
))

_SYNTAX = re.compile(r"([\\()\[\]])")
_KEYWORDS = re.compile(r"\b(BREAK|AND)\b")


def escape_webui_prompt(text: str) -> str:
    """LLM text made literal for the WebUI prompt parser: brackets escaped, BREAK/AND keywords lower-cased."""
    return _KEYWORDS.sub(lambda m: m.group(1).lower(), _SYNTAX.sub(r"\\\1", text))


def region_prompts(canvas: Canvas, prompt_box: str, mode: str) -> list[RegionPrompt]:
    """The prompt tree (global first, then far to near), with the prompt box appended to the global region."""
    prompts = canvas_prompts(canvas)
    extra = normalize_prompt(prompt_box or "")
    if mode == APPEND and extra:
        first = prompts[0]
        prompts[0] = RegionPrompt(first.prefixes, (*first.suffixes, extra))
    return prompts


def chunk_texts(prompts: Sequence[RegionPrompt], count_tokens: Callable[[str], int]) -> list[tuple[int, str]]:
    """(region index, chunk text) for every chunk, in context order."""
    return [(index, text) for index, prompt in enumerate(prompts)
            for text in region_chunks(prompt, count_tokens)]


def check_chunk_count(count: int) -> None:
    """CanvasError when a canvas makes more prompt chunks than one generation takes (checked before encoding)."""
    if count > MAX_CONTEXT_CHUNKS:
        raise CanvasError(f"the canvas makes {count} prompt chunks ({count * CHUNK_TOKENS} tokens), more than the "
                          f"{MAX_CONTEXT_CHUNKS} ({MAX_CONTEXT_CHUNKS * CHUNK_TOKENS} tokens) one generation takes; "
                          "shorten the descriptions or use fewer regions")


def negative_texts(canvas: Canvas) -> list[tuple[int, str]]:
    """(region index in mask order, negative prompt) of the regions that have one: the global region 0,
    then the regions far to near."""
    regions = [canvas.global_region, *ordered_regions(canvas)]
    return [(index, region.negative) for index, region in enumerate(regions) if region.negative]


def check_negative_chunk_count(count: int) -> None:
    """CanvasError when the canvas's negative prompts make more chunks than one generation takes."""
    if count > MAX_CONTEXT_CHUNKS:
        raise CanvasError(f"the canvas's negative prompts make {count} prompt chunks, more than the "
                          f"{MAX_CONTEXT_CHUNKS} one generation takes; shorten them")


def token_regions(chunk_lengths: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The token -> region map from (region index, token count) per encoded chunk."""
    return torch.cat([torch.full((n,), region, dtype=torch.long) for region, n in chunk_lengths])


def region_weights(canvas: Canvas) -> torch.Tensor:
    """Per-region weights in mask order: the global region 1, then the canvas regions far to near."""
    return torch.tensor([1.0] + [float(r.weight) for r in ordered_regions(canvas)], dtype=torch.float64)


def _chunk_rows(cond_or_uncond: Sequence[int], batch: int) -> tuple[int, list[bool]]:
    if not cond_or_uncond or batch % len(cond_or_uncond):
        raise ValueError(f"a UNet batch of {batch} rows does not split into chunks {list(cond_or_uncond)}")
    return batch // len(cond_or_uncond), [c == 0 for c in cond_or_uncond]


def common_length(lengths: Sequence[int]) -> int:
    """The token length the contexts of one UNet call are brought to: the least common multiple of their
    lengths (whole repetitions leave attention unchanged; the WebUI repeats its own conds so) while that is at
    most MAX_CONTEXT_REPEAT x the longest, else the longest (see ``fit_tokens``)."""
    longest = max(lengths)
    lcm = math.lcm(*lengths)
    return lcm if lcm <= MAX_CONTEXT_REPEAT * longest else longest


def fit_tokens(x: torch.Tensor, length: int, filler: torch.Tensor | None) -> torch.Tensor:
    """``x`` [..., L, C] at ``length`` tokens: repeated whole as often as it fits, the rest filled with
    ``filler``'s tokens [P, C] (repeated and cut; the same for every leading row). When L divides ``length``
    this is exactly ``x.repeat`` and ``filler`` is not needed."""
    copies, rest = divmod(length, x.shape[-2])
    whole = x.repeat(*[1] * (x.dim() - 2), copies, 1)
    if not rest:
        return whole
    if filler is None:
        raise ValueError(f"{x.shape[-2]} tokens do not divide {length}, and no filler tokens were given")
    fill = filler.to(x.device, x.dtype).repeat(-(-rest // filler.shape[0]), 1)[:rest]
    return torch.cat([whole, fill.expand(*x.shape[:-2], -1, -1)], dim=-2)


def fit_token_regions(regions: torch.Tensor, length: int) -> torch.Tensor:
    """The token -> region map of a canvas context brought to ``length`` by ``fit_tokens``: filler tokens
    belong to the global region (0), the region every pixel sees."""
    return fit_tokens(regions[:, None], length, regions.new_zeros(1, 1))[:, 0]


def with_negatives(context: torch.Tensor, own_tokens: int, negatives: torch.Tensor) -> torch.Tensor:
    """Uncond rows' context [B, U + Ln, C]: the WebUI's negative prompt (its first ``own_tokens`` tokens:
    the WebUI repeats it whole to a common length) followed by the canvas's negatives [Ln, C]."""
    if own_tokens <= 0 or context.shape[1] % own_tokens:
        raise ValueError(f"a context of {context.shape[1]} tokens is no repetition of a {own_tokens}-token "
                         "negative prompt")
    extra = negatives.to(context.device, context.dtype).expand(context.shape[0], -1, -1)
    return torch.cat([context[:, :own_tokens], extra], dim=1)


def negative_token_regions(own_tokens: int, regions: torch.Tensor) -> torch.Tensor:
    """The token -> region map of ``with_negatives``' context: the WebUI's negative prompt is the global
    region's (0), then the canvas negatives' map ``regions``."""
    return torch.cat([regions.new_zeros(own_tokens), regions])


def swap_context(context: torch.Tensor, cond_or_uncond: Sequence[int], regional: torch.Tensor,
                 filler: torch.Tensor | None = None, negatives: torch.Tensor | None = None,
                 own_tokens: int | None = None) -> torch.Tensor:
    """The UNet call's cross-attention context with every cond chunk's rows replaced by ``regional`` [L, C]
    and, given ``negatives`` and the WebUI's ``own_tokens``, the uncond rows' context extended by them
    (``with_negatives``).

    All rows are brought to ``common_length`` of the lengths present (a call of cond chunks alone keeps the
    regional context's own length); ``filler`` [P, C] (the encoded empty prompt) fills up a context whose
    length does not divide it.
    """
    per, is_cond = _chunk_rows(cond_or_uncond, context.shape[0])
    if negatives is not None and own_tokens is not None and not all(is_cond):
        context = with_negatives(context, own_tokens, negatives)
    lengths = [regional.shape[0]] + ([context.shape[1]] if not all(is_cond) else [])
    length = common_length(lengths)
    ours = fit_tokens(regional.to(context.device, context.dtype), length, filler)
    own = fit_tokens(context, length, filler) if not all(is_cond) else None
    rows = [ours.expand(per, -1, -1) if cond else own[j * per:(j + 1) * per] for j, cond in enumerate(is_cond)]
    return torch.cat(rows)


def swap_rows(vector: torch.Tensor, cond_or_uncond: Sequence[int], ours: torch.Tensor) -> torch.Tensor:
    """SDXL's pooled ``y`` [B, D] with the cond chunks' rows replaced by ``ours`` [D]."""
    per, is_cond = _chunk_rows(cond_or_uncond, vector.shape[0])
    ours = ours.to(vector.device, vector.dtype)
    rows = [ours.expand(per, -1) if cond else vector[j * per:(j + 1) * per] for j, cond in enumerate(is_cond)]
    return torch.cat(rows)


def region_contexts(context: torch.Tensor, regions: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Each region's own tokens [L_r, C] (its chunks, in order) out of the canvas context and its token map."""
    return [context[regions == r] for r in range(count)]


def blend_weights(masks: torch.Tensor, weights: torch.Tensor, strength: float) -> tuple[float, torch.Tensor]:
    """Prediction blending's per-pixel weights: (whole-canvas weight, region weights [1 + R, h, w] float64).

    Region r at pixel i gets strength * w_r m_r(i) / sum_s w_s m_s(i); the whole-canvas cond (all the canvas
    text in one context) gets 1 - strength. They sum to 1 at every pixel (the global region covers all of
    them with weight 1), so the WebUI's sum(mult * pred) / sum(mult) is exactly this weighted average.
    """
    weighted = masks.to(torch.float64) * weights.to(torch.float64)[:, None, None]
    return 1.0 - strength, strength * weighted / weighted.sum(0)


def blend_parts(full_context: torch.Tensor, contexts: Sequence[torch.Tensor], masks: torch.Tensor,
                weights: torch.Tensor, strength: float, regional: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(context, per-pixel weight [h, w] or None for 'everywhere, weight 1') of every cond to run.

    Without the regional effect (after end percent, a plain hires pass, strength 0) that is the whole canvas
    text alone; parts whose weight is zero everywhere are left out (they would cost a UNet row for nothing).
    """
    if not regional or strength <= 0:
        return [(full_context, None)]
    full_weight, region_weight = blend_weights(masks, weights, strength)
    parts = [(full_context, torch.full_like(region_weight[0], full_weight))] if full_weight > 0 else []
    return parts + [(ctx, w) for ctx, w in zip(contexts, region_weight) if bool(w.any())]


def negative_blend_contexts(negatives: torch.Tensor, regions: torch.Tensor,
                            count: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Prediction blending's negatives, added to the WebUI's negative prompt: (all of them, for the whole
    canvas part; per region [L_r, C]: the global region's, then each region's own after it). Every region
    without its own negative gets the global region's tensor itself, so ``merged_parts`` joins them."""
    own = region_contexts(negatives, regions, count)
    common = own[0]
    return negatives, [common] + [torch.cat([common, tokens]) if len(tokens) else common for tokens in own[1:]]


def merged_parts(parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]]):
    """Parts that share one context (the same tensor) as one part with the sum of their weights: the same
    weighted average of predictions, with one UNet row per distinct context."""
    merged: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for context, weight in parts:
        seen = merged.get(id(context))
        merged[id(context)] = (context, weight if seen is None else seen[1] + weight)
    return list(merged.values())


def masked_uncond_items(template: dict, parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
                        like: torch.Tensor) -> list[dict]:
    """The uncond items of prediction blending: the WebUI's negative prompt (``template``'s own rows, one
    per image) followed by each part's negatives [L, C], with that part's weight."""
    own = template["model_conds"]["c_crossattn"].cond
    return masked_cond_items(template, [(torch.cat([own, extra.to(own).expand(own.shape[0], -1, -1)], dim=1), w)
                                        for extra, w in parts], None, like)


def masked_cond_items(template: dict, parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
                      vector: torch.Tensor | None, like: torch.Tensor) -> list[dict]:
    """The WebUI cond items for ``parts``, built from one of its own (``template``: its other keys and its
    condition classes are kept; masks get ``like``'s dtype and device). A context is [L, C] or, one per
    image, [B, L, C].

    Every item's ``strength`` is 1 / len(parts): both forks multiply CFG by the sum of the items' strengths
    (their "edit strength"), and a uniform strength cancels in the mask-weighted average.
    """
    crossattn = type(template["model_conds"]["c_crossattn"])
    share = 1.0 / len(parts)
    items = []
    for context, weight in parts:
        context = context if context.dim() == 3 else context[None]
        conds = {**template["model_conds"], "c_crossattn": crossattn(context)}
        if vector is not None and "y" in conds:
            conds["y"] = type(conds["y"])(vector[None])
        item = {k: v for k, v in template.items() if k not in ("mask", "mask_strength", "area")}
        item.update(model_conds=conds, strength=share)
        if "cross_attn" in item:
            item["cross_attn"] = context
        if weight is not None:
            item["mask"] = weight[None].to(like.device, like.dtype)
        items.append(item)
    return items


@dataclass
class RegionalStage:
    """Regional cross-attention on the calls whose context is the canvas context (brought to the call's length
    by ``fit_tokens``: repeated, and filled up with global-region tokens where needed)."""
    canvas: Canvas
    regions: torch.Tensor                  # token -> region map of the canvas context [L]
    method: str
    strength: float
    end_sigma: float                       # active while sigma >= end_sigma
    info: ModelInfo
    name: str = "Omost"
    target: str = ATTN2
    order: int = 10
    exclusive: str | None = None
    negative_regions: torch.Tensor | None = None   # token -> region map of the canvas's negatives, if any
    layouts: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in ATTENTION_METHODS:
            raise ValueError(f"{self.method!r} is not an attention method; choose one of "
                             f"{', '.join(ATTENTION_METHODS)}")
        self.weights = region_weights(self.canvas)

    def applies(self, layer) -> bool:
        return True

    def active(self, call: AttnCall) -> bool:
        return call.sigma is None or call.sigma >= self.end_sigma

    def masks(self, hw: tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(region_masks(self.canvas, *hw))).flatten(1)

    def layout(self, hw, context_len: int, dtype, device, own_tokens: int | None = None):
        """Built once per (layer size, context length, dtype, device, and for the uncond rows the length of
        the WebUI's negative prompt), on that device: nothing is moved or converted per call."""
        key = (hw, context_len, dtype, device, own_tokens)
        if key not in self.layouts:
            masks = self.masks(hw).to(device)
            negative = own_tokens is not None
            base = negative_token_regions(own_tokens, self.negative_regions) if negative else self.regions
            regions = fit_token_regions(base, context_len)
            self.layouts[key] = ATTENTION_METHODS[self.method].layout(self, regions, masks, context_len, dtype,
                                                                      negative)
        return self.layouts[key]

    def attend(self, q, k, v, call: AttnCall, layout, rows):
        """The method on ``rows`` of the batch (None: all of them), plain attention on the others."""
        return ATTENTION_METHODS[self.method].attend(self, q, k, v, call, layout, rows)

    def own_tokens(self, call: AttnCall) -> int | None:
        """The WebUI negative prompt's token count when this call's uncond rows carry the canvas negatives."""
        if self.negative_regions is None or not call.uncond_rows:
            return None
        tokens = call.options.get(UNCOND_TOKENS)
        return int(tokens) if tokens else None

    def __call__(self, q, k, v, call: AttnCall, inner):
        own_tokens = self.own_tokens(call)
        if k.shape[1] < self.regions.shape[0] or not (call.cond_rows or own_tokens):
            return inner(q, k, v, call)          # not the canvas context (or no regional rows in this call)
        if own_tokens is None:
            return self.attend(q, k, v, call, self.layout(call.hw, k.shape[1], q.dtype, q.device), call.cond_rows)
        groups = []
        for rows, tokens in ((call.cond_rows, None), (call.uncond_rows, own_tokens)):
            if rows:
                layout = self.layout(call.hw, k.shape[1], q.dtype, q.device, tokens)
                groups.append((rows, lambda q_, k_, v_, layout=layout: self.attend(q_, k_, v_, call, layout, None)))
        return attention_by_row_groups(q, k, v, call.heads, groups)



# ---- the attention methods: one row each (prediction blending is not one: it changes the predictions) ----

@dataclass(frozen=True)
class AttentionMethod:
    """How a regional attention method builds its layout (once per layer size and context) and attends.
    ``layout(stage, token regions, masks, context length, dtype, negative)``; ``attend(stage, q, k, v,
    call, layout, rows)``."""
    layout: Callable
    attend: Callable


def _omost_layout(stage, regions, masks, context_len, dtype, negative):
    return omost_layout(regions, masks, context_len, strength=stage.strength, region_weights=stage.weights,
                        dtype=dtype)


def _couple_layout(mode: str) -> Callable:
    def layout(stage, regions, masks, context_len, dtype, negative):
        return couple_layout(regions, masks, context_len, mode=mode, strength=stage.strength,
                             region_weights=stage.weights, dtype=dtype, tokenless_to_global=negative)
    return layout


def _dense_layout(stage, regions, masks, context_len, dtype, negative):
    return dense_cross_layout(regions, masks, context_len)


def _omost_attend(stage, q, k, v, call, layout, rows):
    return omost_attention(q, k, v, call.heads, layout, cond_rows=rows)


def _couple_attend(stage, q, k, v, call, layout, rows):
    return attention_couple(q, k, v, call.heads, layout, cond_rows=rows)


def _dense_attend(stage, q, k, v, call, layout, rows):
    timestep = stage.info.timestep(call.sigma) if call.sigma is not None else 999.0
    return densediffusion_attention(q, k, v, call.heads, layout, timestep, weight=stage.strength, cond_rows=rows)


ATTENTION_METHODS = {
    OMOST: AttentionMethod(_omost_layout, _omost_attend),
    COUPLE: AttentionMethod(_couple_layout("average"), _couple_attend),
    OVERLAY: AttentionMethod(_couple_layout("overlay"), _couple_attend),
    DENSE: AttentionMethod(_dense_layout, _dense_attend),
}


def is_prediction_blending(method: str) -> bool:
    """Whether ``method`` works on the predictions (masked conds), not in attention."""
    return method not in ATTENTION_METHODS
