# Mirrors reForge ldm_patched/modules/lora_convert.py @ 3b56b268: convert_lora(sd) rewrites other trainers'
# key styles; kohya-style and diffusers-style files pass unchanged (the only ones the stand-in reads).
def convert_lora(sd):
    return sd
