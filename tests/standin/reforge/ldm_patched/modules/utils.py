# Mirrors reForge ldm_patched/modules/utils.py @ 3b56b268: load_torch_file, set_attr (returns the previous
# value: the object-patch backup of model_patcher.patch_model), get_attr.
from standin_core.lora_files import load_torch_file  # noqa: F401 (real name)


def set_attr(obj, attr, value):
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    prev = getattr(obj, attrs[-1])
    setattr(obj, attrs[-1], value)
    return prev


def get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj
