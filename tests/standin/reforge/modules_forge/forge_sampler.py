# Mirrors reForge modules_forge/forge_sampler.py @ 3b56b268: the A1111 cond -> ldm_patched cond conversion
# (same as Forge main's compile_conditions; written once in standin_core.batching) and sampling_prepare's
# percent_to_sigma hook name.
from standin_core.batching import (compile_conditions as cond_from_a1111_to_patched_ldm,  # noqa: F401 (real names)
                                   compile_weighted_conditions as cond_from_a1111_to_patched_ldm_weighted)
