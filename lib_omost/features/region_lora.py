"""Per-region LoRA: which LoRAs each canvas region names, and the canvas with the tags taken out.

A region names a LoRA with the WebUI's own extra-network syntax in any of its texts, ``<lora:name>``,
``<lora:name:weight>``, ``<lora:name:te_weight:unet_weight>`` or named ``te=`` / ``unet=`` arguments (the
rules of the WebUI's ExtraNetworkLora), or in the canvas JSON as ``"loras": [{"name": ..., "weight": ...}]``
(optional ``"te"`` / ``"unet"`` override the weight per part). The tags are removed from the text the
encoder sees. Region order is the masks' order: 0 = the global region (every pixel), then far to near.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from lib_omost.canvas import Canvas, ordered_regions
from lib_omost.canvas.model import TEXT_FIELDS
from lib_omost.quoting import quoted

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")          # the WebUI's extra-network tag (modules/extra_networks)
UNCLOSED = re.compile(r"<lora:[^>]*$", re.IGNORECASE)


@dataclass(frozen=True)
class RegionLora:
    name: str
    te: float          # text-encoder weight
    unet: float        # UNet weight

    @property
    def active(self) -> bool:
        return self.te != 0 or self.unet != 0


def _number(value: str, what: str, tag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{tag}: the {what} {quoted(value)} is not a number (write <lora:name:0.8>)") from None


def lora_of_tag(args: str, tag: str) -> RegionLora:
    """The LoRA of one tag's arguments (after ``lora:``), by the WebUI's rules: name, te weight (1),
    unet weight (= te), named te= / unet= override; a fourth (dyn) argument is allowed and unused."""
    items = args.split(":")
    positional = [x for x in items if "=" not in x]
    named = dict(x.split("=", 1) for x in items if "=" in x)
    if not positional or not positional[0].strip():
        raise ValueError(f"{tag}: no LoRA name (write <lora:name:weight>)")
    unknown = sorted(set(named) - {"te", "unet", "dyn"})
    if unknown:
        raise ValueError(f"{tag}: unknown argument {quoted(unknown[0])} (allowed: te=, unet=, dyn=)")
    te = _number(positional[1], "weight", tag) if len(positional) > 1 else 1.0
    te = _number(named["te"], "te weight", tag) if "te" in named else te
    unet = _number(positional[2], "unet weight", tag) if len(positional) > 2 else te
    unet = _number(named["unet"], "unet weight", tag) if "unet" in named else unet
    return RegionLora(positional[0].strip(), te, unet)


def take_tags(text: str) -> tuple[str, list[RegionLora], list[str]]:
    """(text without extra-network tags, the LoRAs named, problems): a bad LoRA tag or another kind of
    extra network is removed and reported, never encoded as text."""
    loras, problems = [], []

    def found(match):
        kind, args = match.group(1), match.group(2)
        if kind.lower() != "lora":
            problems.append(f"{match.group(0)}: only <lora:...> acts per region; this tag was removed")
            return ""
        try:
            loras.append(lora_of_tag(args, match.group(0)))
        except ValueError as e:
            problems.append(str(e))
        return ""

    cleaned = EXTRA_NETWORK.sub(found, text)
    if UNCLOSED.search(cleaned):
        problems.append(f"{quoted(cleaned[UNCLOSED.search(cleaned).start():])}: a <lora:...> tag without its "
                        "closing '>' (it stays as text)")
    return (" ".join(cleaned.split()) if loras or problems else cleaned), loras, problems


def strip_text(text: str) -> str:
    """``text`` without extra-network tags (the prompt box's own LoRAs act globally through the WebUI)."""
    return take_tags(text)[0]


def _strip_fields(obj, names) -> tuple[object, list[RegionLora], list[str]]:
    changes, loras, problems = {}, [], []
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            changes[name], found, bad = take_tags(value)
        else:
            cleaned = [take_tags(line) for line in value]
            changes[name] = [c for c, _, _ in cleaned]
            found, bad = [x for _, f, _ in cleaned for x in f], [x for _, _, b in cleaned for x in b]
        loras += found
        problems += bad
    return dataclasses.replace(obj, **changes), loras, problems


def _listed(entries) -> list[RegionLora]:
    return [RegionLora(e["name"], float(e.get("te", e["weight"])), float(e.get("unet", e["weight"])))
            for e in entries]


def canvas_loras(canvas: Canvas) -> tuple[Canvas, list[list[RegionLora]], list[str]]:
    """(the canvas with every LoRA tag removed from its texts, the LoRAs per region in mask order (tags and
    the JSON ``loras`` list; weight 0 left out), problems to report)."""
    g, g_loras, problems = _strip_fields(canvas.global_region, ("description", "detailed_descriptions", "tags"))
    g = dataclasses.replace(g, loras=[])
    stripped, per_program = [], []
    for region in canvas.regions:
        r, found, bad = _strip_fields(region, TEXT_FIELDS + ("detailed_descriptions",))
        stripped.append(dataclasses.replace(r, loras=[]))
        per_program.append(_listed(region.loras) + found)
        problems += bad
    clean = Canvas(global_region=g, regions=stripped)
    order = {id(r): i for i, r in enumerate(stripped)}
    per_region = [_listed(canvas.global_region.loras) + g_loras]
    per_region += [per_program[order[id(r)]] for r in ordered_regions(clean)]
    return clean, [[x for x in loras if x.active] for loras in per_region], problems


def describe(per_region: list[list[RegionLora]]) -> str:
    """One line for the log: which region uses which LoRA at which weight."""
    parts = [f"region {i}: " + ", ".join(f"{x.name} {x.unet:g}" for x in loras)
             for i, loras in enumerate(per_region) if loras]
    return "; ".join(parts)
