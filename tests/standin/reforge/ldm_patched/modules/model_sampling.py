# Mirrors reForge ldm_patched/modules/model_sampling.py @ 3b56b268: ModelSamplingDiscrete (+ EPS):
# percent_to_sigma, timestep(sigma), sigma(timestep), sigmas / log_sigmas, set_sigmas.
from standin_core.schedule import DiscreteEpsSchedule


class ModelSamplingDiscrete(DiscreteEpsSchedule):
    def __init__(self, model_config=None, zsnr=None):
        settings = getattr(model_config, "sampling_settings", {}) if model_config is not None else {}
        super().__init__(linear_start=settings.get("linear_start", 0.00085), linear_end=settings.get("linear_end", 0.012),
                         timesteps=settings.get("timesteps", 1000))
