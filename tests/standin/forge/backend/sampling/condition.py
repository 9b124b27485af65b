# Mirrors Forge main backend/sampling/condition.py @ dfdcbab6 (same logic as reForge's conds.py; written
# once in standin_core.batching): Condition, ConditionCrossAttn (lcm/min <= 4, repeat to the LCM),
# compile_conditions, compile_weighted_conditions, repeat_to_batch_size.
import math

from standin_core.batching import (Condition, ConditionCrossAttn, compile_conditions,  # noqa: F401 (real names)
                                   compile_weighted_conditions, repeat_to_batch_size)


def lcm(a, b):
    return math.lcm(a, b)
