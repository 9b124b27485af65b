# Mirrors the LoRA registry of both forks, the module the built-in LoRA extension imports as `networks`:
#   Forge main  extensions-builtin/sd_forge_lora/networks.py + network.py NetworkOnDisk     @ dfdcbab6
#   reForge     extensions-builtin/Lora/networks.py + network.py NetworkOnDisk              @ 3b56b268
# (the same code in both for these names): available_networks {name: NetworkOnDisk},
# available_network_aliases (name and alias), forbidden_network_aliases ({"none", "addams"} and clashing
# aliases), list_available_networks() walks shared.cmd_opts.lora_dir for .pt / .ckpt / .safetensors;
# update_available_networks_by_names(names). NetworkOnDisk.filename, .name, .alias (= name here: no metadata).
import os

from modules import shared

ALLOWED = (".pt", ".ckpt", ".safetensors")


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name, self.filename, self.alias = name, filename, name


available_networks = {}
available_network_aliases = {}
forbidden_network_aliases = {}


def process_network_files(names=None):
    for root, _, files in os.walk(shared.cmd_opts.lora_dir, followlinks=True):
        for file in sorted(files):
            if os.path.splitext(file)[1].lower() not in ALLOWED:
                continue
            name = os.path.splitext(file)[0]
            if names and name not in names:
                continue
            entry = NetworkOnDisk(name, os.path.join(root, file))
            available_networks[name] = entry
            if entry.alias in available_network_aliases:
                forbidden_network_aliases[entry.alias.lower()] = 1
            available_network_aliases[name] = entry
            available_network_aliases[entry.alias] = entry


def update_available_networks_by_names(names):
    process_network_files(names)


def list_available_networks():
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    forbidden_network_aliases.update({"none": 1, "addams": 1})
    os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    process_network_files()
