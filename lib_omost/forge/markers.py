"""The attributes that mark what we installed on the WebUI's objects ("this is ours"), in one place.

Each is set on a function we install so that the next generation (or our own cleanup) recognises it and
finds what it replaced; values are distinct, so no two mechanisms can mistake each other's marks.
"""

WRAPPER_ATTR = "omost_wrapper_chains_to"        # our model_function_wrapper: the wrapper it chains to (or None)
MODIFIER_ATTR = "omost_conditioning_modifier"   # our conditioning modifier (prediction blending)
FOREIGN_ATTR = "omost_replace_wraps"            # our attention replaces: the foreign replace each wraps (or None)
PREVIOUS_ATTR = "omost_override_replaced"       # our scheduler override: the override it replaced (or None)
OUR_BLOCK_ATTR = "omost_block_patch"            # our UNet block patches (HiDiffusion RAU-Net)
OUR_PATCH_ATTR = "omost_attention_patch"        # our attn1/attn2 patches (pre-projection stages: RefDrop Save)

ALL_MARKERS = (WRAPPER_ATTR, MODIFIER_ATTR, FOREIGN_ATTR, PREVIOUS_ATTR, OUR_BLOCK_ATTR, OUR_PATCH_ATTR)
