# LoRA files as both forks read them (tests only), written once; each flavour's module wraps it in its own
# return format. Mirrors
#   Forge main  packages_3rdparty/comfyui_lora_collection/lora.py load_lora, model_lora_keys_unet,
#               model_lora_keys_clip; backend/utils.py load_torch_file                        @ dfdcbab6
#   reForge     ldm_patched/modules/lora.py load_lora (weight_adapter/lora.py LoRAAdapter.load),
#               model_lora_keys_unet, model_lora_keys_clip; ldm_patched/modules/utils.py     @ 3b56b268
# Facts kept: key map "lora_unet_<path with _>" and the generic "<path>" -> "diffusion_model.<path>.weight"
# for every UNet weight; "lora_te_<path with _>" (SD1/SD2, clip_l.transformer.text_model.*) and
# "lora_te1_" / "lora_te2_" (SDXL clip_l / clip_g) for the text encoders; a LoRA is "<key>.lora_up.weight",
# "<key>.lora_down.weight", optional "<key>.lora_mid.weight", "<key>.alpha" (a 0-d tensor read with .item()),
# "<key>.dora_scale"; the diffusers forms "<key>.lora_B.weight" / "lora_A.weight" as well. Not mirrored: the
# diffusers-name map of the UNet (unet_to_diffusers), LoHa / LoKr / GLoRA / OFT, the "diff" / "set" patches.
import safetensors.torch
import torch

FORMS = (("{}.lora_up.weight", "{}.lora_down.weight", "{}.lora_mid.weight"),
         ("{}.lora_B.weight", "{}.lora_A.weight", None))


def load_torch_file(ckpt, safe_load=False, device=None):
    device = torch.device("cpu") if device is None else device
    if ckpt.lower().endswith(".safetensors"):
        return safetensors.torch.load_file(ckpt, device=device.type)
    return torch.load(ckpt, map_location=device, weights_only=True)


def model_lora_keys_unet(model, key_map):
    for k in model.state_dict().keys():
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_map["lora_unet_{}".format(k[len("diffusion_model."):-len(".weight")].replace(".", "_"))] = k
                key_map[k[:-len(".weight")]] = k
            else:
                key_map[k] = k
    return key_map


def model_lora_keys_clip(model, key_map):
    """``model``: the CLIP's cond_stage_model with clip_l (and clip_g) text encoders (torch modules)."""
    prefixes = {"clip_l": "lora_te1_", "clip_g": "lora_te2_"} if hasattr(model, "clip_g") else {"clip_l": "lora_te_",
                                                                                                 "clip_h": "lora_te_"}
    for name, prefix in prefixes.items():
        encoder = getattr(model, name, None)
        if encoder is None:
            continue
        for k in encoder.state_dict().keys():
            if k.endswith(".weight"):
                key_map[prefix + k[:-len(".weight")].replace(".", "_")] = f"{name}.transformer.{k}"
    return key_map


def read_lora(lora, to_load):
    """{model key: (up, down, alpha, mid, dora_scale)} and the loaded file keys."""
    found, loaded = {}, set()
    for x in to_load:
        alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
        dora = lora.get(f"{x}.dora_scale")
        loaded.update(k for k in (f"{x}.alpha", f"{x}.dora_scale") if k in lora)
        for up_name, down_name, mid_name in FORMS:
            up_name, down_name = up_name.format(x), down_name.format(x)
            if up_name in lora:
                mid_name = mid_name.format(x) if mid_name else None
                mid = lora.get(mid_name) if mid_name else None
                found[to_load[x]] = (lora[up_name], lora[down_name], alpha, mid, dora)
                loaded.update(k for k in (up_name, down_name, mid_name) if k and k in lora)
                break
    return found, loaded
