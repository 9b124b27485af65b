# Mirrors Forge main backend/utils.py @ dfdcbab6: load_torch_file (safetensors or torch.load), get_attr,
# set_attr_raw (the object-patch setters of backend/patcher/base.py).
from standin_core.lora_files import load_torch_file  # noqa: F401 (real name)


def set_attr_raw(obj, attr, value):
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    setattr(obj, attrs[-1], value)


def get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj
