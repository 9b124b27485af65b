# The toy memory model behind the batching decision (tests only; no real file mirrors it).
# The real forks compare an estimate of the UNet's working memory with the free device memory:
#   Forge main  calc_cond_uncond_batch: model.memory_required(shape) < free_memory            @ dfdcbab6
#   reForge     _calc_cond_batch:       model.memory_required(shape, ...) * 1.5 < free_memory  @ 3b56b268
# Here memory_required(shape) is the number of rows (shape[0]) and free memory is a number tests set,
# which lets a test force "split" calls (one chunk per UNet call) exactly as a short GPU would.
import math

free_memory = math.inf


def rows_required(input_shape, **kwargs):
    return float(input_shape[0])


def set_max_rows(max_rows, factor):
    """Make every batch of up to ``max_rows`` rows fit (``factor``: the flavour's safety multiplier)."""
    global free_memory
    free_memory = math.inf if max_rows is None else (max_rows + 0.5) * factor
