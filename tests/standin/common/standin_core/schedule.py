# The discrete (1000-step, scaled-linear beta) noise schedule with eps prediction, identical in
#   Forge main  backend/modules/k_prediction.py  Prediction / AbstractPrediction   @ dfdcbab6
#   reForge     ldm_patched/modules/model_sampling.py ModelSamplingDiscrete + EPS   @ 3b56b268
# Same formulas: sigmas = sqrt((1 - acp) / acp); timestep(sigma) = index of the nearest log-sigma;
# sigma(t) interpolates log-sigmas; percent_to_sigma(p) = sigma((1 - p) * 999), with 999999999.9 at
# p <= 0 and 0.0 at p >= 1.
import torch


def scaled_linear_betas(timesteps, linear_start, linear_end):
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2


class DiscreteEpsSchedule(torch.nn.Module):
    def __init__(self, linear_start=0.00085, linear_end=0.012, timesteps=1000, sigma_data=1.0):
        super().__init__()
        self.sigma_data = sigma_data
        alphas_cumprod = torch.cumprod(1.0 - scaled_linear_betas(timesteps, linear_start, linear_end), dim=0)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.set_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)

    def set_sigmas(self, sigmas):
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        distances = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, frac = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    # eps prediction (the SD1.5 / SDXL default)
    def calculate_input(self, sigma, noise):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        noise = noise * (torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else sigma)
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent

    def automatic_sigmas(self, steps):
        """k-diffusion DiscreteSchedule.get_sigmas(n): uniform in t from 999 to 0, then a final 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, steps)
        return torch.cat([self.sigma(t), self.sigmas.new_zeros([1])])


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def karras_sigmas(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    """k-diffusion get_sigmas_karras (Forge k_diffusion/sampling.py, reForge ldm_patched/k_diffusion/sampling.py):
    n sigmas evenly spaced in sigma**(1/rho) from sigma_max down to sigma_min, then a final 0."""
    ramp = torch.linspace(0, 1, n, device=device)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho).to(device)
