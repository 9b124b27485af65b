"""Per-region LoRA in the WebUI: find the files through the WebUI's LoRA registry, read them with its own
loader and key maps, and add each LoRA's low-rank update un-merged on the layers it targets, only where its
region is (lib_omost.unet.lora).

The updates are object patches on a clone of the UNet patcher (``<layer path>.forward``, replaced by a
forward that calls the layer's own and adds the gated update); the WebUI sets them when it loads that clone
for sampling and puts the layers' own forwards back when it loads another clone of the model, so no weight
is ever changed and the state dict is the same throughout. Which rows / pixels / tokens a region owns in the
current UNet call is set by our model_function_wrapper into a per-generation ``CallState`` (never global).
Nothing is installed when no region names a LoRA.

The text-encoder part (``text_encoder_loras``, ``on_text_encoder``) acts while the region's own chunks are
encoded, and only then.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from lib_omost.attention.core import layer_hw
from lib_omost.canvas import region_masks
from lib_omost.features import omost
from lib_omost.features.region_lora import RegionLora
from lib_omost.forge.pass_plan import Parts
from lib_omost.forge.webui import FORGE, flavour
from lib_omost.unet.lora import CONTEXT, CONV, TOKENS, Gate, LowRank, gated_forward, layer_kind, low_rank

log = logging.getLogger("sd-forge-omost")

MARK = "omost_lora_region"            # model_conds key carrying the region of each prediction-blending row


# ---- the WebUI's registry and loader ------------------------------------------------------------------

def _networks():
    """The built-in LoRA extension's registry module (``networks``), or None where it is not loaded."""
    module = sys.modules.get("networks")
    if module is None:
        try:
            module = importlib.import_module("networks")
        except ImportError:
            return None
    return module if hasattr(module, "available_network_aliases") else None


def lora_folders() -> list[str]:
    """The folders the WebUI reads LoRAs from (--lora-dir; models/Lora by default)."""
    from modules import shared
    folders = [getattr(shared.cmd_opts, "lora_dir", None), getattr(shared.cmd_opts, "lyco_dir_backcompat", None)]
    return [f for f in dict.fromkeys(folders) if f]


def find_lora_file(name: str) -> str | None:
    """The file of a LoRA name (or alias) as the WebUI's ``<lora:name>`` resolves it, or None."""
    networks = _networks()
    if networks is None:
        return _walk_for(name)

    def lookup():
        if name.lower() in networks.forbidden_network_aliases:
            entry = networks.available_networks.get(name)
        else:
            entry = networks.available_network_aliases.get(name)
        return entry.filename if entry is not None else None

    found = lookup()
    update = getattr(networks, "update_available_networks_by_names", None)    # not in Forge Classic
    if found is None and update is not None:
        update([name])
        found = lookup()
    if found is None:
        networks.list_available_networks()
        found = lookup()
    return found


def _walk_for(name: str) -> str | None:
    for folder in lora_folders():
        for root, _, files in os.walk(folder, followlinks=True):
            for file in files:
                stem, ext = os.path.splitext(file)
                if stem == name and ext.lower() in (".safetensors", ".pt", ".ckpt"):
                    return os.path.join(root, file)
    return None


@functools.lru_cache(maxsize=4)
def _read_file(filename: str, mtime: float) -> dict:
    if flavour() == FORGE:
        from backend.utils import load_torch_file
    else:
        from ldm_patched.modules.utils import load_torch_file
    return load_torch_file(filename, safe_load=True)


def _file_patches(filename: str, key_map) -> dict:
    """{model weight key: the WebUI's patch} of one file; ``key_map(lora_module)`` is the WebUI's key map
    (its model_lora_keys_unet / _clip of the model in question)."""
    state = _read_file(filename, os.path.getmtime(filename))
    if flavour() == FORGE:
        from backend.patcher import lora
        patches, _ = lora.load_lora(state, key_map(lora))
        return patches
    from ldm_patched.modules import lora
    try:
        from ldm_patched.modules import lora_convert
    except ImportError:         # Forge Classic: no converter (kohya keys are read as they are), no log_missing,
        patches, _ = lora.load_lora(state, key_map(lora))      # and (patches, the keys it did not use)
        return patches
    return lora.load_lora(lora_convert.convert_lora(state), key_map(lora), log_missing=False)


def unet_patches(unet, filename: str) -> dict:
    """{UNet weight key: the WebUI's patch} of one file, through the WebUI's own key map and loader."""
    return _file_patches(filename, lambda lora: lora.model_lora_keys_unet(unet.model, {}))


def te_patches(clip, filename: str) -> dict:
    """{text-encoder weight key under ``clip.cond_stage_model``: the WebUI's patch} of one file, through the
    WebUI's own CLIP key map (kohya lora_te_ / lora_te1_ / lora_te2_, diffusers text_encoder(_2).) and loader."""
    return _file_patches(filename, lambda lora: lora.model_lora_keys_clip(clip.cond_stage_model, {}))


def lora_factors(patch) -> tuple | None:
    """(up, down, alpha, mid) of a plain LoRA patch (Forge main: ("lora", (...)); reForge: a LoRAAdapter
    with .weights); None for other kinds (LoHa, LoKr, DoRA, full diffs), which are not low-rank here."""
    if isinstance(patch, tuple) and len(patch) == 2 and patch[0] == "lora":
        weights = patch[1]
    elif getattr(patch, "name", None) == "lora" and hasattr(patch, "weights"):
        weights = patch.weights
    else:
        return None
    up, down, alpha, mid = weights[:4]
    dora_scale = weights[4] if len(weights) > 4 else None      # Forge Classic's tuples have no DoRA entry
    return None if dora_scale is not None else (up, down, alpha, mid)


# ---- per-call state -----------------------------------------------------------------------------------

@dataclass
class CallState:
    """What the current UNet call is, set by our wrapper for the duration of the call (None outside)."""
    canvas: object
    token_regions: torch.Tensor | None          # attention methods: token -> region of the canvas context
    blending: bool
    call: dict | None = None
    masks: dict = field(default_factory=dict)
    token_positions: dict = field(default_factory=dict)

    def pixels(self, region: int, hw: tuple[int, int], device) -> torch.Tensor:
        key = (hw, device)
        if key not in self.masks:
            self.masks[key] = torch.from_numpy(np.ascontiguousarray(region_masks(self.canvas, *hw))).to(device)
        return self.masks[key][region]

    def tokens(self, region: int, length: int, device) -> torch.Tensor:
        """The region's positions in a context of ``length`` tokens; once per generation, not per layer call
        (``nonzero`` waits for the device)."""
        key = (region, length, device)
        if key not in self.token_positions:
            fitted = omost.fit_token_regions(self.token_regions, length)
            self.token_positions[key] = (fitted == region).nonzero()[:, 0].to(device)
        return self.token_positions[key]

    def gates(self, region: int, kind: str, x: torch.Tensor, out: torch.Tensor) -> list[tuple[int, Gate]]:
        call = self.call
        if call is None:
            return []
        if self.blending:
            rows = call["rows"].get(region)
            return [] if rows is None else [(region, Gate(rows=rows))]
        if kind == CONTEXT:
            rows, length = call["cond_rows"], x.shape[1]
            if rows.numel() == 0 or length < self.token_regions.shape[0]:
                return []
            return [(region, Gate(rows=rows, tokens=self.tokens(region, length, x.device)))]
        if kind == CONV:
            hw = tuple(out.shape[2:])
        elif kind == TOKENS and x.dim() == 3:
            hw = layer_hw(call["latent_hw"], out.shape[1])
        else:
            return []         # a per-row vector (time embedding): no spatial extent to restrict to
        return [(region, Gate(rows=call["all_rows"], pixels=self.pixels(region, hw, out.device)))]

    def begin(self, args: dict) -> dict:
        """Read this call's rows from the WebUI's arguments; returns the arguments to pass on."""
        x, chunks = args["input"], args["cond_or_uncond"]
        rows = torch.arange(x.shape[0], device=x.device)
        per = x.shape[0] // max(len(chunks), 1)
        cond = torch.cat([rows[j * per:(j + 1) * per] for j, c in enumerate(chunks) if c == 0] or [rows[:0]])
        c = dict(args["c"])
        marker = c.pop(MARK, None)
        by_region = {}
        if marker is not None:
            ids = marker.reshape(marker.shape[0], -1)[:, 0].round().long()
            by_region = {int(r): (ids == r).nonzero()[:, 0] for r in ids.unique().tolist() if r >= 0}
        self.call = dict(latent_hw=tuple(x.shape[2:]), all_rows=rows, cond_rows=cond, rows=by_region)
        return {**args, "c": c}


def lora_wrapper(state: CallState, previous):
    """A model_function_wrapper announcing each UNet call to ``state``; chains to ``previous``."""
    def wrapper(apply_model, args):
        args = state.begin(args)
        try:
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])
        finally:
            state.call = None
    return wrapper


# ---- prediction blending: rows tagged with their region ----------------------------------------------

def _condition_class():
    if flavour() == FORGE:
        from backend.sampling.condition import Condition
        return Condition
    from ldm_patched.modules.conds import CONDRegular
    return CONDRegular


def row_marker(region_of_parts):
    """For the blending modifier: (cond items, uncond items) -> the same items carrying their region
    (uncond -1) as an extra model cond, which our wrapper takes out again before the UNet sees it."""
    condition = _condition_class()

    def tag(items, region):
        return [{**item, "model_conds": {**item["model_conds"], MARK: condition(torch.full((1, 1), float(r)))}}
                for item, r in zip(items, region)]

    def mark(cond, uncond, parts, contexts):
        regions = region_of_parts(parts, contexts)
        return tag(cond, regions), (tag(uncond, [-1] * len(uncond)) if uncond else uncond)
    return mark


def part_regions(parts, contexts) -> list[int]:
    """The region of each blending part (its context is that region's own tensor); -1 = the whole canvas."""
    return [next((r for r, ctx in enumerate(contexts) if ctx is part[0]), -1) for part in parts]


# ---- install ------------------------------------------------------------------------------------------

@dataclass
class Loaded:
    updates: dict                      # layer path -> [(region, LowRank)]
    missing: list                      # names not found
    skipped: dict                      # name -> count of layers of a kind not applied un-merged
    files: dict                        # name -> filename
    sources: dict = field(default_factory=dict)     # region -> [(name, file, mtime, weight)] that gave updates


def _load(per_region: list[list[RegionLora]], part: str, patches_of, usable=lambda path: True) -> Loaded:
    """Every region's LoRAs as low-rank factors per layer path, at each LoRA's ``part`` weight ("unet" or
    "te"; 0 = left out); ``patches_of(filename)`` reads a file's patches for that part; a layer that is not
    ``usable`` (path) counts as skipped."""
    loaded = Loaded({}, [], {}, {})
    for region, loras in enumerate(per_region):
        for lora in loras:
            weight = getattr(lora, part)
            if weight == 0:
                continue
            filename = loaded.files.get(lora.name) or find_lora_file(lora.name)
            if filename is None:
                loaded.missing.append(lora.name)
                continue
            loaded.files[lora.name] = filename
            used = False
            for key, patch in patches_of(filename).items():
                factors = lora_factors(patch)
                path = key[:-len(".weight")]
                if factors is None or not key.endswith(".weight") or not usable(path):
                    loaded.skipped[lora.name] = loaded.skipped.get(lora.name, 0) + 1
                    continue
                up, down, alpha, mid = factors
                lr: LowRank = low_rank(up, down, alpha, mid, weight)
                loaded.updates.setdefault(path, []).append((region, lr))
                used = True
            if used:
                source = (lora.name, filename, os.path.getmtime(filename), weight)
                loaded.sources.setdefault(region, []).append(source)
    return loaded


def load_region_loras(unet, per_region: list[list[RegionLora]]) -> Loaded:
    """Every region's LoRAs as low-rank factors per UNet layer path, at their UNet weight."""
    return _load(per_region, "unet", lambda filename: unet_patches(unet, filename))


def not_found_message(name: str) -> str:
    return (f"region LoRA {name!r} was not found (searched {', '.join(lora_folders()) or 'no LoRA folder'}); "
            "the image is made without it")


# ---- text encoder: the region's own prompt only --------------------------------------------------------

@dataclass(frozen=True)
class TextEncoderLoras:
    """One region's LoRAs on the text encoder: factors per layer path under ``clip.cond_stage_model``, and
    what they are ((name, file, mtime, te weight) each) for the encode cache."""
    key: tuple
    updates: dict                      # layer path -> [LowRank]


def text_encoder_loras(clip, per_region: list[list[RegionLora]], report) -> list[TextEncoderLoras | None]:
    """Per region (mask order) its LoRAs' text-encoder parts at their te weight, None where it has none
    (a LoRA file without text-encoder layers, te weight 0). ``report(message)`` gets the problems: a name
    not found (only when no region gives it a UNet weight: the UNet part reports those, so a name is one
    note), layers that are not plain low-rank or not a Linear layer."""
    def linear(path):
        try:
            return is_linear(_get(clip.cond_stage_model, path))
        except AttributeError:
            return False
    loaded = _load(per_region, "te", lambda filename: te_patches(clip, filename), usable=linear)
    in_unet = {lora.name for loras in per_region for lora in loras if lora.unet != 0}
    for name in dict.fromkeys(loaded.missing):
        if name not in in_unet:
            report(not_found_message(name))
    for name, count in loaded.skipped.items():
        report(f"region LoRA {name!r}: {count} of its text-encoder layers are not plain low-rank Linear layers "
               "and were left out")
    if loaded.updates:
        log.info("Omost: region LoRAs' text-encoder parts on %d layers (%s)", len(loaded.updates),
                 ", ".join(loaded.files))
    by_region: list[TextEncoderLoras | None] = []
    for region in range(len(per_region)):
        updates = {path: [lr for r, lr in items if r == region] for path, items in loaded.updates.items()}
        updates = {path: lrs for path, lrs in updates.items() if lrs}
        by_region.append(TextEncoderLoras(tuple(loaded.sources[region]), updates) if updates else None)
    return by_region


_UNSET = object()


def _all_rows(region, kind, x, out):
    return [(region, Gate(rows=torch.arange(x.shape[0], device=x.device)))]


def is_linear(layer) -> bool:
    """A Linear layer of either fork: reForge's subclass ``torch.nn.Linear``, Forge main's text-encoder
    ``ForgeOperations.Linear`` is a plain module with a 2-D ``weight``."""
    weight = getattr(layer, "weight", None)
    return not isinstance(layer, torch.nn.Conv2d) and isinstance(weight, torch.Tensor) and weight.dim() == 2


@contextlib.contextmanager
def on_text_encoder(clip, loras: TextEncoderLoras | None):
    """For the duration of one encode, each targeted text-encoder layer's output plus its LoRAs' low-rank
    updates (un-merged, every token). Set as a forward on the layer object and taken off in ``finally``,
    rather than object patches on a CLIP clone swapped in: both forks encode with the modules of
    ``forge_objects.clip.cond_stage_model`` directly, and a clone would make their memory managers load and
    unload a second patcher of the same modules; this way the loaded TE, its patcher and its weights stay
    as they are, and only this encode sees the update."""
    saved = []
    try:
        for path, updates in (loras.updates.items() if loras is not None else ()):
            layer = _get(clip.cond_stage_model, path)
            saved.append((layer, layer.__dict__.get("forward", _UNSET)))
            layer.forward = gated_forward(layer, layer.forward, TOKENS, [(0, lr) for lr in updates], _all_rows)
        yield
    finally:
        for layer, previous in reversed(saved):
            if previous is _UNSET:
                del layer.forward
            else:
                layer.forward = previous


def _get(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def parts(unet, per_region: list[list[RegionLora]], canvas, token_regions, blending: bool, report) -> Parts:
    """The region LoRAs' part of the pass plan (layer forwards and the call wrapper); empty when no region
    LoRA acts. ``unet``: the pass's UNet (its model's layers). ``report(message)`` gets every problem
    (missing names with the folders searched, kinds that cannot be added un-merged)."""
    if not any(per_region):
        return Parts()
    loaded = load_region_loras(unet, per_region)
    for name in dict.fromkeys(loaded.missing):
        report(not_found_message(name))
    for name, count in loaded.skipped.items():
        report(f"region LoRA {name!r}: {count} of its layers are not plain low-rank (LoHa, LoKr, DoRA or full "
               "weights) and were left out")
    if not loaded.updates:
        return Parts()
    state = CallState(canvas, token_regions, blending)

    def forwards(target) -> dict:
        patched = {}
        for path, updates in loaded.updates.items():
            layer = _get(target.model, path)
            name = f"{path}.forward"
            # the class's forward, not the attribute: a clone of ours from an earlier generation may still be set
            original = target.object_patches.get(name, type(layer).forward.__get__(layer, type(layer)))
            patched[name] = gated_forward(layer, original, layer_kind(path, layer), updates, state.gates)
        return patched
    log.info("Omost: region LoRAs on %d layers (%s)", len(loaded.updates), ", ".join(loaded.files))
    return Parts(wrappers=(lambda previous: lora_wrapper(state, previous),), object_patches=forwards)
