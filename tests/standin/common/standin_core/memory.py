# The toy memory model behind the batching decision (tests only; no real file mirrors it).
# The real forks compare an estimate of the UNet's working memory with the free device memory:
#   Forge main  calc_cond_uncond_batch: model.memory_required(shape) < free_memory            @ dfdcbab6
#   reForge     _calc_cond_batch:       model.memory_required(shape, ...) * 1.5 < free_memory  @ 3b56b268
# Here memory_required(shape) is the number of rows (shape[0]) and free memory is a number tests set,
# which lets a test force "split" calls (one chunk per UNet call) exactly as a short GPU would.
import math

free_memory = math.inf


# Patchers whose object patches are on their model, most recent first (memory_management / model_management
# current_loaded_models): loading a patcher first unloads its loaded clones, which restores their object
# patches (Forge main LoadedModel.model_unload -> forge_unpatch_model, reForge unload_model_clones ->
# detach -> unpatch_model), then applies its own (forge_patch_model / patch_model). A loaded patcher stays
# patched after sampling until another clone of its model is loaded.
current_loaded_models = []


def load_models_gpu(patcher, patch, unpatch):
    if any(m is patcher for m in current_loaded_models):
        return
    for m in [m for m in current_loaded_models if patcher.is_clone(m)]:
        current_loaded_models.remove(m)
        unpatch(m)
    patch(patcher)
    current_loaded_models.insert(0, patcher)


def rows_required(input_shape, **kwargs):
    return float(input_shape[0])


def set_max_rows(max_rows, factor):
    """Make every batch of up to ``max_rows`` rows fit (``factor``: the flavour's safety multiplier)."""
    global free_memory
    free_memory = math.inf if max_rows is None else (max_rows + 0.5) * factor
