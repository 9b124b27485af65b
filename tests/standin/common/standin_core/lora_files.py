# LoRA files as both forks read them (tests only), written once; each flavour's module wraps it in its own
# return format. Mirrors
#   Forge main  packages_3rdparty/comfyui_lora_collection/lora.py load_lora, model_lora_keys_unet,
#               model_lora_keys_clip; backend/utils.py load_torch_file                        @ dfdcbab6
#   reForge     ldm_patched/modules/lora.py load_lora (weight_adapter/lora.py LoRAAdapter.load),
#               model_lora_keys_unet, model_lora_keys_clip; ldm_patched/modules/utils.py     @ 3b56b268
# Facts kept: key map "lora_unet_<path with _>" and the generic "<path>" -> "diffusion_model.<path>.weight"
# for every UNet weight; for the text encoders the per-layer loop over LORA_CLIP_MAP ("lora_te_" / "lora_te1_"
# -> clip_l or clip_h, "lora_te2_" -> clip_g after a clip_l, the diffusers "text_encoder(_2).text_model..."
# names, reForge's generic "text_encoders.<path>"); a LoRA is "<key>.lora_up.weight",
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


CLIP_LAYERS = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
               "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
               "self_attn.out_proj": "self_attn_out_proj"}       # both forks' LORA_CLIP_MAP


def model_lora_keys_clip(model, key_map, generic=False):
    """``model``: the CLIP's cond_stage_model (clip_l / clip_h / clip_g, each with .transformer). Per encoder
    layer b and mapped sub-layer: clip_h and clip_l answer to lora_te_ and lora_te1_ (and diffusers
    text_encoder.), clip_g to lora_te2_ (text_encoder_2.) after a clip_l, else to lora_te_; the
    text_projection keys. ``generic`` (reForge): also "text_encoders.<weight path>" for every weight."""
    sdk = model.state_dict().keys()
    if generic:
        key_map.update({"text_encoders." + k[:-len(".weight")]: k for k in sdk if k.endswith(".weight")})
    clip_l_present = False
    for b in range(32):
        for c, kohya in CLIP_LAYERS.items():
            for encoder in ("clip_h", "clip_l", "clip_g"):
                k = f"{encoder}.transformer.text_model.encoder.layers.{b}.{c}.weight"
                if k not in sdk:
                    continue
                if encoder == "clip_g" and clip_l_present:
                    names = (f"lora_te2_text_model_encoder_layers_{b}_{kohya}",
                             f"text_encoder_2.text_model.encoder.layers.{b}.{c}")
                elif encoder == "clip_g":
                    names = (f"lora_te_text_model_encoder_layers_{b}_{kohya}",
                             f"text_encoder.text_model.encoder.layers.{b}.{c}",
                             f"lora_prior_te_text_model_encoder_layers_{b}_{kohya}")
                else:
                    names = (f"lora_te_text_model_encoder_layers_{b}_{kohya}",
                             f"lora_te1_text_model_encoder_layers_{b}_{kohya}",
                             f"text_encoder.text_model.encoder.layers.{b}.{c}")
                    clip_l_present = clip_l_present or encoder == "clip_l"
                key_map.update(dict.fromkeys(names, k))
    if "clip_g.transformer.text_projection.weight" in sdk:
        key_map["lora_te2_text_projection"] = "clip_g.transformer.text_projection.weight"
    if "clip_l.transformer.text_projection.weight" in sdk:
        key_map["lora_te1_text_projection"] = "clip_l.transformer.text_projection.weight"
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
