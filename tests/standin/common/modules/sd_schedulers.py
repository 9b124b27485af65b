# Mirrors modules/sd_schedulers.py (Forge main @ dfdcbab6, reForge @ 3b56b268) for two schedulers:
# "Automatic" (function None: the sampler's own schedule, uniform in t) and "Karras" (k-diffusion
# get_sigmas_karras, default_rho 7). schedulers_map is keyed by name and by label, as the real one.
import dataclasses

from standin_core.schedule import karras_sigmas


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: object

    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list = None


schedulers = [
    Scheduler("automatic", "Automatic", None),
    Scheduler("karras", "Karras", karras_sigmas, default_rho=7.0),
]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
