# Mirrors reForge ldm_patched/modules/conds.py @ 3b56b268 (same logic as Forge's condition.py; written once
# in standin_core.batching): CONDRegular, CONDCrossAttn (lcm/min <= 4, repeat to the LCM).
from standin_core.batching import Condition as CONDRegular, ConditionCrossAttn as CONDCrossAttn  # noqa: F401
