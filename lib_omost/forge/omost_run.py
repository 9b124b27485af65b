"""Omost in the WebUI's sampling: encode the canvas with the loaded CLIP, swap it in, install the stage.

Encodings are cached per CLIP object and text (a weak-keyed cache: it dies with the model), so an
unchanged canvas is not re-encoded on the next generation or X/Y/Z cell.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import weakref

import torch

from lib_omost.canvas import CanvasError, canvas_to_json, load_canvas_text, region_masks
from lib_omost.features import omost, region_lora as region_lora_tags
from lib_omost.forge import omost_start, region_lora
from lib_omost.forge.accordions import Accordion, Contribution, DidNotRun
from lib_omost.forge.generation import report_problem
from lib_omost.forge.pass_plan import Parts
from lib_omost.prompt_chunks import count_words

log = logging.getLogger("sd-forge-omost")

_encodings: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def token_counter(sd_model):
    """CLIP token count of a text with the loaded model's own tokenizer (an estimate where none is exposed)."""
    lengths = getattr(sd_model, "get_prompt_lengths_on_ui", None)       # Forge main / Neo engines
    if lengths is not None:
        return lambda text: int(lengths(text)[0])
    try:                                                               # reForge / Classic
        from modules import sd_hijack
        cond_stage = sd_model.cond_stage_model
        return lambda text: int(sd_hijack.model_hijack.get_prompt_lengths(text, cond_stage)[0])
    except (ImportError, AttributeError):
        return lambda text: math.ceil(count_words(text) * 1.3)


def encode_chunk(p, text: str, negative: bool = False, te_loras=None):
    """(crossattn [tokens, C], pooled vector [D] or None) of one chunk text (a negative prompt: encoded as
    the WebUI encodes its negative prompt box), cached per CLIP, size and ``te_loras`` (a region's
    region_lora.TextEncoderLoras, added un-merged to the text encoder for this encode only)."""
    from modules.prompt_parser import SdConditioning
    clip = p.sd_model.forge_objects.clip
    cache = _encodings.setdefault(clip, {})
    key = (text, int(p.width), int(p.height), negative, te_loras.key if te_loras is not None else ())
    if key not in cache:
        with region_lora.on_text_encoder(clip, te_loras):
            cond = p.sd_model.get_learned_conditioning(SdConditioning([text], is_negative_prompt=negative,
                                                                      width=p.width, height=p.height))
        if isinstance(cond, dict):
            cache[key] = (cond["crossattn"][0].detach(), cond["vector"][0].detach())
        else:
            cache[key] = (cond[0].detach(), None)
    return cache[key]


def canvas_chunks(p, canvas, prompt_box_mode: str) -> list[tuple[int, str]]:
    """(region index, chunk text) of a canvas, counted with the loaded tokenizer; CanvasError when there are
    more than one generation takes (checked before anything is encoded)."""
    # the prompt box's own <lora:...> tags act globally through the WebUI; they are not text to encode
    prompt_box = region_lora_tags.strip_text(getattr(p, "prompt", "") or "")
    prompts = omost.region_prompts(canvas, prompt_box, prompt_box_mode)
    chunks = omost.chunk_texts(prompts, token_counter(p.sd_model))
    omost.check_chunk_count(len(chunks))
    return chunks


def encode_canvas(p, chunks: list[tuple[int, str]], loras=(), report=log.warning):
    """(context [L, C], token -> region [L], pooled vector or None, chunk count) of a canvas's chunks.
    ``loras``: the LoRAs per region in mask order (the chunks' region indices); a region's text-encoder
    LoRAs act on its own chunks only; ``report`` gets their problems."""
    te = region_lora.text_encoder_loras(p.sd_model.forge_objects.clip, loras, report) if any(loras) else []
    encoded = [encode_chunk(p, omost.escape_webui_prompt(text), te_loras=te[region] if te else None)
               for region, text in chunks]
    context = torch.cat([cross for cross, _ in encoded])
    regions = omost.token_regions([(region, cross.shape[0]) for (region, _), (cross, _) in zip(chunks, encoded)])
    return context, regions, encoded[0][1], len(chunks)


def canvas_negatives(p, canvas):
    """(negatives context [Ln, C], token -> region [Ln]) of the canvas's negative prompts, or None when it
    has none. Each is written in the WebUI's prompt syntax (users write them) and encoded whole."""
    texts = omost.negative_texts(canvas)
    if not texts:
        return None
    encoded = [encode_chunk(p, text, negative=True)[0] for _, text in texts]
    return torch.cat(encoded), omost.token_regions([(r, e.shape[0]) for (r, _), e in zip(texts, encoded)])


def negative_chunk_count(p, canvas) -> int:
    """Chunks the canvas's negative prompts will take (at least one each), counted before encoding."""
    count = token_counter(p.sd_model)
    return sum(max(1, math.ceil(count(text) / 75)) for _, text in omost.negative_texts(canvas))


def context_wrapper(context: torch.Tensor, vector, previous, filler: torch.Tensor, negatives=None):
    """A model_function_wrapper giving the cond chunks of every UNet call the canvas context (and SDXL's
    pooled vector) and, with canvas ``negatives`` [Ln, C], the uncond chunks the WebUI's negative prompt
    followed by them; ``filler`` (the encoded empty prompt) fills up contexts of incompatible lengths
    (``omost.swap_context``). Chains to ``previous`` (another extension's wrapper, or None)."""
    def wrapper(apply_model, args):
        c = dict(args["c"])
        chunks = args["cond_or_uncond"]
        own_tokens = c.get("transformer_options", {}).get(omost.UNCOND_TOKENS) if negatives is not None else None
        if 0 in chunks or own_tokens:
            extra = {"negatives": negatives, "own_tokens": own_tokens} if own_tokens else {}
            c["c_crossattn"] = omost.swap_context(c["c_crossattn"], chunks, context, filler, **extra)
            if 0 in chunks and vector is not None and c.get("y") is not None:
                c["y"] = omost.swap_rows(c["y"], chunks, vector)
        if previous is not None:
            return previous(apply_model, {**args, "c": c})
        return apply_model(args["input"], args["timestep"], **c)
    return wrapper


def uncond_tokens_modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
    """A conditioning modifier telling every UNet call of this step (its transformer_options) how many
    tokens the WebUI's negative prompt has, before the WebUI repeats it to a common length: the context
    wrapper and the regional stage put the canvas negatives after exactly those tokens."""
    if uncond:
        options = {**model_options.get("transformer_options", {}),
                   omost.UNCOND_TOKENS: int(uncond[0]["model_conds"]["c_crossattn"].cond.shape[1])}
        model_options = {**model_options, "transformer_options": options}
    return model, x, timestep, uncond, cond, cond_scale, model_options, seed


def blending_modifier(canvas, context, regions, vector, strength: float, end_sigma: float, regional: bool,
                      negatives=None, mark_rows=None):
    """A conditioning modifier replacing the positive conds with prediction blending's masked conds (the
    whole canvas text alone once the regional effect is over) and, with canvas ``negatives`` (context,
    token -> region), the uncond with masked unconds of the same weights: each region's the WebUI's
    negative prompt followed by the global and its own negatives. ``mark_rows`` (region LoRAs) tags each
    item with its region."""
    count = 1 + len(canvas.regions)
    contexts = omost.region_contexts(context, regions, count)
    negative_contexts = omost.negative_blend_contexts(*negatives, count) if negatives is not None else None
    weights = omost.region_weights(canvas)
    made = {}       # the parts per (latent size, regional or not, dtype, device): computed once, not per step

    def parts_for(x, now: bool, full, per_region, merge: bool = False):
        key = (tuple(x.shape[2:]), now, x.dtype, x.device, id(full))
        if key not in made:
            masks = torch.from_numpy(region_masks(canvas, *key[0]))
            parts = [(ctx, None if w is None else w.to(x.device, x.dtype))
                     for ctx, w in omost.blend_parts(full, per_region, masks, weights, strength, now)]
            made[key] = omost.merged_parts(parts) if merge else parts
        return made[key]

    def modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        now = regional and float(timestep[0]) >= end_sigma
        if cond:
            parts = parts_for(x, now, context, contexts)
            cond = omost.masked_cond_items(cond[0], parts, vector, x)
        if uncond and negative_contexts is not None:
            uncond = omost.masked_uncond_items(uncond[0], parts_for(x, now, *negative_contexts, merge=True), x)
        if cond and mark_rows is not None:
            cond, uncond = mark_rows(cond, uncond, parts, contexts)
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed
    return modifier


def cfg_scale_of(p) -> float:
    """The CFG scale of this sampling pass (the hires pass has its own)."""
    return float(getattr(p, "hr_cfg", p.cfg_scale) if getattr(p, "is_hr_pass", False) else p.cfg_scale)


def parse_canvas(text: str):
    """The canvas of the accordion's JSON (or code / LLM answer) text; CanvasError names what is wrong."""
    if not text or not text.strip():
        raise CanvasError("there is no canvas yet: chat with the LLM, paste a canvas JSON, or load the example")
    return load_canvas_text(text).canvas


def offload_chat_model() -> None:
    """Free VRAM for diffusion: a local LLM is moved off the GPU (nothing happens when none is loaded)."""
    from lib_omost.llm import offload_model
    if offload_model():
        log.info("Omost: the local LLM was moved off the GPU for sampling")


def start_from_canvas_colours(p, canvas, strength: float, noise):
    """The initial-latent option's start part (txt2img first pass only; the hires pass samples its own
    schedule), or None after reporting why not."""
    feature = omost.FEATURE
    if hasattr(p, "init_images"):
        report_problem(p, feature, "the initial latent is for txt2img; img2img starts from its own image")
        return None
    if noise is None:
        report_problem(p, feature, "the WebUI passed no starting noise; the initial latent was not used")
        return None
    try:
        latent = omost_start.canvas_latent(p, canvas)
    except (ValueError, RuntimeError, NotImplementedError) as e:      # e.g. a VAE encoder that cannot run
        report_problem(p, feature, f"the initial latent failed ({e}); sampling starts from noise")
        return None
    return omost_start.start_from_canvas(p, latent, strength)


def contribute_omost(p, values, info, sampling) -> Contribution:
    feature = omost.FEATURE
    try:
        written = parse_canvas(values["canvas"])
        canvas, loras, problems = region_lora_tags.canvas_loras(written)    # tags out of the encoded texts
        chunk_texts = canvas_chunks(p, canvas, values["prompt_box"])
        omost.check_negative_chunk_count(negative_chunk_count(p, canvas))
    except CanvasError as e:
        raise DidNotRun(str(e)) from None

    def note(message):
        report_problem(p, feature, message)
    for problem in problems:
        note(problem)
    offload_chat_model()
    context, regions, vector, chunks = encode_canvas(p, chunk_texts, loras, note)
    negatives = canvas_negatives(p, canvas)
    hires = getattr(p, "is_hr_pass", False)
    hires_plain = hires and not values["hires_regions"]
    end_sigma = info.percent_to_sigma(values["end_percent"])
    if negatives is not None and cfg_scale_of(p) == 1:
        report_problem(p, feature, "the canvas's negative prompts had no effect: at CFG scale 1"
                       f"{' (the hires pass)' if hires else ''} the WebUI computes no negative prediction")
    blending = omost.is_prediction_blending(values["method"])
    lora = region_lora.parts(p.sd_model.forge_objects.unet, loras, canvas, None if blending else regions,
                             blending, note)
    if blending:
        mark = region_lora.row_marker(region_lora.part_regions) if lora else None
        own = Parts(modifiers=(blending_modifier(canvas, context, regions, vector, values["strength"], end_sigma,
                                                 regional=not hires_plain, negatives=negatives, mark_rows=mark),))
    else:
        filler, _ = encode_chunk(p, "")
        negative_context = None if negatives is None else negatives[0]
        own = Parts(
            wrappers=(lambda previous: context_wrapper(context, vector, previous, filler, negative_context),),
            modifiers=() if negatives is None else (uncond_tokens_modifier,),
            stages=() if hires_plain else (omost.RegionalStage(
                canvas, regions, values["method"], values["strength"], end_sigma, info,
                negative_regions=None if negatives is None else negatives[1]),))
    start = None
    if values["initial_latent"] > 0 and not hires:
        start = start_from_canvas_colours(p, canvas, values["initial_latent"], sampling.get("noise"))
    parts = dataclasses.replace(own, wrappers=own.wrappers + lora.wrappers, object_patches=lora.object_patches,
                                start=start)
    compact = json.dumps(canvas_to_json(written), ensure_ascii=False, separators=(",", ":"))
    return Contribution(parts, {**values, "canvas": compact},
                        log=f"Omost: {len(canvas.regions)} regions, {chunks} chunks ({context.shape[0]} tokens), "
                            f"{values['method']}{' (no regional masks in this hires pass)' if hires_plain else ''}")


OMOST = Accordion(omost.FEATURE, contribute_omost)
