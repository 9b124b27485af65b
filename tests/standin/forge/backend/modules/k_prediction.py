# Mirrors Forge main backend/modules/k_prediction.py @ dfdcbab6: Prediction (discrete eps schedule) with
# percent_to_sigma, timestep(sigma), sigma(timestep), sigmas / log_sigmas buffers, set_sigmas.
from standin_core.schedule import DiscreteEpsSchedule


class Prediction(DiscreteEpsSchedule):
    def __init__(self, sigma_data=1.0, prediction_type="eps", beta_schedule="linear", linear_start=0.00085,
                 linear_end=0.012, timesteps=1000):
        if prediction_type not in ("eps", "epsilon") or beta_schedule != "linear":
            raise ValueError("the stand-in models only the eps / scaled-linear schedule of SD1.5 and SDXL")
        super().__init__(linear_start=linear_start, linear_end=linear_end, timesteps=timesteps, sigma_data=sigma_data)
        self.prediction_type = prediction_type
