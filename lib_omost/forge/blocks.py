"""Install block-level patches (input/output block patches, Forge main's inner modifiers) on a UNet clone.

Our functions are marked so that running again in the same pass replaces them instead of stacking.
"""

from __future__ import annotations

from lib_omost.forge.markers import OUR_BLOCK_ATTR
from lib_omost.forge.webui import FORGE, flavour

PATCH_SETTERS = {
    "input_block_patch": "set_model_input_block_patch",
    "input_block_patch_after_skip": "set_model_input_block_patch_after_skip",
    "output_block_patch": "set_model_output_block_patch",
}


def _mark(fn):
    setattr(fn, OUR_BLOCK_ATTR, True)
    return fn


def _drop_ours(unet) -> None:
    options = unet.model_options.get("transformer_options", {})
    patches = options.get("patches", {})
    for name in PATCH_SETTERS:
        if name in patches:
            patches[name] = [f for f in patches[name] if not getattr(f, OUR_BLOCK_ATTR, False)]
    if "block_inner_modifiers" in options:
        options["block_inner_modifiers"] = [f for f in options["block_inner_modifiers"]
                                            if not getattr(f, OUR_BLOCK_ATTR, False)]


def foreign_block_patches(unet) -> list[str]:
    """Names of block patches another extension (e.g. Deep Shrink) installed on this UNet."""
    patches = unet.model_options.get("transformer_options", {}).get("patches", {})
    return [name for name in PATCH_SETTERS for f in patches.get(name, []) if not getattr(f, OUR_BLOCK_ATTR, False)]


def _upsample_modifier(fn):
    def modifier(x, when, layer, layer_index, block, transformer_options):
        if when == "before" and type(layer).__name__ == "Upsample":
            return fn(x, transformer_options)
        return x
    return modifier


def upsample_hook_available() -> bool:
    """Whether this WebUI runs a hook just before an Upsample layer (Forge main's block inner modifiers;
    reForge's UNet calls the Upsample directly, so nothing can resize before it there)."""
    return flavour() == FORGE


def install_block_patches(p, patches) -> list[str]:
    """Put ``patches`` (a ``BlockPatches``) on a clone of the pass's UNet. Returns notes for the user.

    ``patches.upsample_before`` needs ``upsample_hook_available()``; the caller decides what to do without it.
    """
    if patches.upsample_before and not upsample_hook_available():
        raise ValueError("this WebUI has no hook before the Upsample layer: leave upsample_before empty")
    notes = []
    unet = p.sd_model.forge_objects.unet.clone()
    _drop_ours(unet)
    foreign = foreign_block_patches(unet)
    if foreign and patches:
        notes.append(f"another extension's block patches are active ({', '.join(sorted(set(foreign)))}, e.g. "
                     "Deep Shrink); if both resize the same block the image may break: turn one off")
    for name, setter in PATCH_SETTERS.items():
        for fn in getattr(patches, name):
            getattr(unet, setter)(_mark(fn))
    for fn in patches.upsample_before:
        unet.add_block_inner_modifier(_mark(_upsample_modifier(fn)))
    p.sd_model.forge_objects.unet = unet
    return notes
