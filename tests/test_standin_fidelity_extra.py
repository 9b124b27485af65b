"""Stand-in fidelity: masked conds, edit strength, get_sigmas (discard / override / Karras / hires scheduler),
the SGM noise multiplier and the toy VAE's images_tensor_to_samples.

Each expectation is a fact of the real code (Forge main dfdcbab6, reForge 3b56b268); the stand-in files name
where. Expected values are computed by hand in float64 from the formulas.
"""

import math

import pytest
import torch

from tests.standin import harness


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


# --- masked conds: a toy model straight into the flavour's batching ------------------------------------

class ToyModel:
    """apply_model: pred = 0.5 * x + mean of the context row; one unit of memory per call (never splits)."""

    def __init__(self):
        self.calls = 0

    def apply_model(self, x, t, c_crossattn=None, transformer_options=None, **kwargs):
        self.calls += 1
        return 0.5 * x + c_crossattn.mean(dim=(1, 2))[:, None, None, None]

    def memory_required(self, input_shape, cond_shapes=None):
        return 0


def cross_attn(tensor):
    from standin_core.batching import ConditionCrossAttn
    return ConditionCrossAttn(tensor)


def chunk(context, **extra):
    return dict(model_conds=dict(c_crossattn=cross_attn(context)), **extra)


def calc_batch(flavour, model, cond, uncond, x, sigma):
    """The flavour's own entry point: Forge calc_cond_uncond_batch, reForge calc_cond_batch."""
    if flavour == "forge":
        from backend.sampling.sampling_function import calc_cond_uncond_batch
        return calc_cond_uncond_batch(model, cond, uncond, x, sigma, {})
    from ldm_patched.modules.samplers import calc_cond_batch
    return tuple(calc_cond_batch(model, [cond, uncond], x, sigma, {}))


def toy_pred(x, context):
    return 0.5 * x + context.mean(dim=(1, 2))[:, None, None, None]


def weighted_mean(preds_and_mults, like):
    out, count = torch.zeros_like(like), torch.full_like(like, 1e-37)
    for pred, mult in preds_and_mults:
        out, count = out + pred * mult, count + mult
    return out / count


def test_masked_cond_enters_only_under_its_mask(flavour):
    torch.manual_seed(0)
    b, h, w = 2, 4, 6
    x = torch.randn(b, 4, h, w, dtype=torch.float64)
    sigma = torch.full((b,), 3.0, dtype=torch.float64)
    full_ctx, masked_ctx, unc_ctx = (torch.randn(b, 77, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.zeros(2, h, w, dtype=torch.float64)
    mask[0, :, :3] = 1.0                      # image 0: left half
    mask[1, 1:3, 2:5] = 0.25                  # image 1: a box at a quarter
    cond = [chunk(full_ctx, strength=0.75), chunk(masked_ctx, strength=1.5, mask=mask, mask_strength=0.6)]
    model = ToyModel()
    out_cond, out_uncond = calc_batch(flavour, model, cond, [chunk(unc_ctx)], x, sigma)
    assert model.calls == 1                   # three chunks, one UNet call

    masked_mult = (mask * 0.6 * 1.5).unsqueeze(1).expand(b, 4, h, w)
    expected = weighted_mean([(toy_pred(x, full_ctx), 0.75), (toy_pred(x, masked_ctx), masked_mult)], x)
    assert torch.allclose(out_cond, expected, rtol=1e-12, atol=0)
    outside = masked_mult == 0
    assert torch.allclose(out_cond[outside], toy_pred(x, full_ctx)[outside], rtol=1e-12, atol=0)
    assert not torch.allclose(out_cond[~outside], toy_pred(x, full_ctx)[~outside])
    assert torch.allclose(out_uncond, toy_pred(x, unc_ctx), rtol=1e-12, atol=0)


def test_only_a_masked_cond_gives_zero_outside_its_mask(flavour):
    x = torch.ones(1, 4, 2, 2, dtype=torch.float64)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]], dtype=torch.float64)
    ctx = torch.full((1, 77, 8), 2.0, dtype=torch.float64)
    out_cond, _ = calc_batch(flavour, ToyModel(), [chunk(ctx, mask=mask)], None, x, torch.ones(1, dtype=torch.float64))
    # pred = 0.5 + 2 = 2.5 where mult > 0 (mult / (1e-37 + mult) == 1), 0 / 1e-37 == 0 elsewhere
    assert out_cond[0, :, 0, 0].tolist() == [2.5] * 4 and out_cond[0, :, 1, 1].tolist() == [2.5] * 4
    assert out_cond[0, :, 0, 1].tolist() == [0.0] * 4 and out_cond[0, :, 1, 0].tolist() == [0.0] * 4


def test_one_mask_row_is_repeated_over_the_batch(flavour):
    x = torch.zeros(3, 4, 2, 2, dtype=torch.float64)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    ctx = torch.full((3, 77, 8), 1.0, dtype=torch.float64)
    out_cond, _ = calc_batch(flavour, ToyModel(), [chunk(ctx, mask=mask)], None, x, torch.ones(3, dtype=torch.float64))
    assert out_cond[:, :, 0, 0].eq(1.0).all() and out_cond[:, :, 1].eq(0.0).all() and out_cond[:, :, 0, 1].eq(0.0).all()


def test_more_mask_rows_than_images_per_fork(flavour):
    """reForge keeps the first B mask rows (mask[:B]); Forge main repeats B // M == 0 times and fails."""
    x = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    mask = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.ones(2, 2)]).double()
    ctx = torch.full((1, 77, 8), 1.0, dtype=torch.float64)
    args = ([chunk(ctx, mask=mask)], None, x, torch.ones(1, dtype=torch.float64))
    if flavour == "forge":
        with pytest.raises(RuntimeError):
            calc_batch(flavour, ToyModel(), *args)
    else:
        out_cond, _ = calc_batch(flavour, ToyModel(), *args)
        assert out_cond[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_bad_mask_size_and_area_conds_are_refused(flavour):
    x = torch.zeros(1, 4, 2, 2)
    ctx = torch.zeros(1, 77, 8)
    with pytest.raises(AssertionError, match="spatial size"):
        calc_batch(flavour, ToyModel(), [chunk(ctx, mask=torch.ones(1, 2, 3))], None, x, torch.ones(1))
    with pytest.raises(NotImplementedError, match="area"):
        calc_batch(flavour, ToyModel(), [chunk(ctx, area=(1, 1, 0, 0))], None, x, torch.ones(1))


def test_edit_strength_scales_cfg(flavour):
    """Σ strength of the cond chunks != 1: uncond + (cond - uncond) * scale * Σ strength (both forks)."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64)
    sigma = torch.full((1,), 2.0, dtype=torch.float64)
    ctx_a, ctx_b, ctx_u = (torch.randn(1, 77, 8, dtype=torch.float64) for _ in range(3))
    cond = [chunk(ctx_a, strength=0.7), chunk(ctx_b, strength=0.6)]
    uncond = [chunk(ctx_u)]
    if flavour == "forge":
        from backend.sampling.sampling_function import sampling_function_inner
        result = sampling_function_inner(ToyModel(), x, sigma, uncond, cond, 4.0, {})
    else:
        from ldm_patched.modules.samplers import sampling_function
        result = sampling_function(ToyModel(), x, sigma, uncond, cond, 4.0, {})
    cond_pred = weighted_mean([(toy_pred(x, ctx_a), 0.7), (toy_pred(x, ctx_b), 0.6)], x)
    uncond_pred = toy_pred(x, ctx_u)
    assert torch.allclose(result, uncond_pred + (cond_pred - uncond_pred) * 4.0 * 1.3, rtol=1e-12, atol=0)


# --- a masked cond through the real flow (a conditioning modifier, as an extension adds it) -------------

def test_masked_cond_from_a_conditioning_modifier(flavour):
    from modules import shared
    harness.load_model("sd15")
    unet = shared.sd_model.forge_objects_original.unet
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0                                          # left half of the 64x64 image's latent

    def add_masked(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        main = cond[0]["model_conds"]["c_crossattn"]
        extra = dict(model_conds=dict(c_crossattn=type(main)(main.cond * 0.5)), mask=mask, mask_strength=0.8,
                     strength=0.5)
        return model, x, timestep, uncond, cond + [extra], cond_scale, model_options, seed

    calls, post = [], []

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        calls.append((list(args["cond_or_uncond"]), args["c"]["c_crossattn"].clone(), out.clone()))
        return out

    def record_post(args):
        post.append((args["cond_denoised"].clone(), args["uncond_denoised"].clone(), args["denoised"].clone()))
        return args["denoised"]

    unet.add_conditioning_modifier(add_masked)
    unet.set_model_unet_function_wrapper(wrapper)
    unet.set_model_sampler_post_cfg_function(record_post)
    harness.plain_txt2img(prompt="a cat", negative_prompt="ugly", cfg_scale=5)

    cond_or_uncond, contexts, outputs = calls[0]
    assert sorted(cond_or_uncond) == [0, 0, 1] and len(calls) == 2       # 3 chunks in one call per step
    preds = dict(zip(range(3), outputs.chunk(3)))
    ctx = contexts.chunk(3)
    uncond_i = cond_or_uncond.index(1)
    cond_is = [i for i in range(3) if cond_or_uncond[i] == 0]
    main_i, masked_i = sorted(cond_is, key=lambda i: -float(ctx[i].abs().sum()))   # the masked one is halved
    assert torch.allclose(ctx[masked_i], ctx[main_i] * 0.5)

    mult = (mask * 0.8 * 0.5).unsqueeze(1).expand(1, 4, 8, 8).double()
    main, masked = preds[main_i].double(), preds[masked_i].double()
    expected = weighted_mean([(main, 1.0), (masked, mult)], main)
    cond_denoised, uncond_denoised, denoised = post[0]
    assert torch.allclose(cond_denoised.double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(cond_denoised[..., 4:], preds[main_i][..., 4:])   # right half: the main cond only
    assert torch.equal(uncond_denoised, preds[uncond_i])
    # edit strength: 1 (the prompt) + 0.5 (the masked chunk)
    expected_cfg = uncond_denoised.double() + (cond_denoised.double() - uncond_denoised.double()) * 5 * 1.5
    assert torch.allclose(denoised.double(), expected_cfg, rtol=0, atol=1e-4)


# --- get_sigmas -----------------------------------------------------------------------------------------

def sampler_and_p(**p_kwargs):
    from modules import processing, sd_samplers, shared
    harness.load_model("sd15")
    p = processing.StableDiffusionProcessingTxt2Img(sampler_name="Euler", **p_kwargs)
    return sd_samplers.create_sampler("Euler", shared.sd_model), p


def model_sigma_range():
    from modules import shared
    sigmas = harness.schedule(shared.sd_model.forge_objects.unet).sigmas
    return sigmas[0].item(), sigmas[-1].item()


def karras_by_hand(n, sigma_min, sigma_max, rho=7.0):
    values = [(sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
              for i in range(n)]
    return torch.tensor(values + [0.0], dtype=torch.float64)


def test_automatic_schedule_is_unchanged_and_writes_nothing(flavour):
    sampler, p = sampler_and_p(scheduler="Automatic")
    sigmas = sampler.get_sigmas(p, 4)
    from modules import shared
    assert torch.equal(sigmas, harness.schedule(shared.sd_model.forge_objects.unet).automatic_sigmas(4))
    assert p.sampler_noise_scheduler_override is None and p.extra_generation_params == {}


def test_karras_schedule_formula(flavour):
    sampler, p = sampler_and_p(scheduler="Karras")
    sigmas = sampler.get_sigmas(p, 5)
    sigma_min, sigma_max = model_sigma_range()
    assert sigmas.dtype == torch.float32 and sigmas.shape == (6,) and float(sigmas[-1]) == 0.0
    assert torch.allclose(sigmas.double(), karras_by_hand(5, sigma_min, sigma_max), rtol=1e-5, atol=0)
    assert math.isclose(float(sigmas[0]), sigma_max, rel_tol=1e-6) and math.isclose(float(sigmas[4]), sigma_min, rel_tol=1e-5)
    assert p.extra_generation_params == {"Schedule type": "Karras"}


def test_karras_in_a_generation_feeds_the_unet_its_sigmas(flavour):
    harness.load_model("sd15")
    with harness.record_unet_calls() as calls:
        result = harness.plain_txt2img(prompt="a cat", cfg_scale=5, steps=3, scheduler="Karras")
    sigma_min, sigma_max = model_sigma_range()
    seen = [float(c.transformer_options["sigmas"][0]) for c in calls]
    assert seen == pytest.approx(karras_by_hand(3, sigma_min, sigma_max)[:3].tolist(), rel=1e-5)
    assert "Schedule type: Karras" in result.infotexts[0]


def test_override_replaces_the_schedule(flavour):
    sampler, p = sampler_and_p(scheduler="Karras")
    requested = []

    def override(steps):
        requested.append(steps)
        return torch.linspace(9.0, 0.0, steps + 1)

    p.sampler_noise_scheduler_override = override
    assert torch.equal(sampler.get_sigmas(p, 4), torch.linspace(9.0, 0.0, 5)) and requested == [4]
    assert "Schedule type" not in p.extra_generation_params          # the scheduler branch never ran


def test_discard_applies_after_the_override(flavour):
    from modules.shared import opts
    sampler, p = sampler_and_p()
    requested = []

    def override(steps):
        requested.append(steps)
        return torch.linspace(8.0, 0.0, steps + 1)

    p.sampler_noise_scheduler_override = override
    opts.always_discard_next_to_last_sigma = True
    full = torch.linspace(8.0, 0.0, 6)
    assert requested == [] and torch.equal(sampler.get_sigmas(p, 4), torch.cat([full[:-2], full[-1:]]))
    assert requested == [5] and p.extra_generation_params == {"Discard penultimate sigma": True}


def test_always_discard_drops_the_penultimate_sigma(flavour):
    from modules import shared
    from modules.shared import opts
    sampler, p = sampler_and_p()
    opts.always_discard_next_to_last_sigma = True
    sigmas = sampler.get_sigmas(p, 4)
    full = harness.schedule(shared.sd_model.forge_objects.unet).automatic_sigmas(5)
    assert sigmas.shape == (5,) and torch.equal(sigmas, torch.cat([full[:4], full[5:]]))
    assert float(full[4]) > 0 and float(full[4]) not in sigmas.tolist()
    result = harness.plain_txt2img(prompt="a cat", steps=2)
    assert "Discard penultimate sigma: True" in result.infotexts[0]


def test_sampler_config_discard_writes_no_infotext(flavour):
    from modules import sd_samplers
    sampler, p = sampler_and_p(scheduler="Karras")
    sampler.config = sd_samplers.SamplerData("Euler", ["k_euler"], {"discard_next_to_last_sigma": True})
    sigma_min, sigma_max = model_sigma_range()
    full = karras_by_hand(5, sigma_min, sigma_max)
    assert torch.allclose(sampler.get_sigmas(p, 4).double(), torch.cat([full[:-2], full[-1:]]), rtol=1e-5, atol=0)
    assert p.extra_generation_params == {"Schedule type": "Karras"}


def test_hires_pass_uses_hr_scheduler(flavour):
    sampler, p = sampler_and_p(scheduler="Automatic", hr_scheduler="Karras", enable_hr=True)
    p.is_hr_pass = True
    sigma_min, sigma_max = model_sigma_range()
    assert torch.allclose(sampler.get_sigmas(p, 3).double(), karras_by_hand(3, sigma_min, sigma_max), rtol=1e-5, atol=0)
    assert p.extra_generation_params == {"Hires schedule type": "Karras"}
    # hr_scheduler None: the first pass's scheduler (StableDiffusionProcessingTxt2Img.init)
    _, p2 = sampler_and_p(scheduler="Karras", enable_hr=True)
    p2.init([""], [1], [1])
    assert p2.hr_scheduler == "Karras" and p2.extra_generation_params["Hires schedule type"] is None


def test_unknown_scheduler_becomes_automatic(flavour):
    result = harness.plain_txt2img(prompt="a cat", steps=2, scheduler="No Such Schedule")
    assert "Schedule type: Automatic" in result.infotexts[0]


# --- SGM noise multiplier ---------------------------------------------------------------------------------

def first_unet_input(tab="txt2img", **kwargs):
    """The x of the first UNet call (before the model's input scaling) and the infotext."""
    from modules import processing, shared
    harness.load_model("sd15")
    unet = shared.sd_model.forge_objects_original.unet
    inputs = []

    def wrapper(apply_model, args):
        inputs.append(args["input"].clone())
        return apply_model(args["input"], args["timestep"], **args["c"])

    unet.set_model_unet_function_wrapper(wrapper)
    base = dict(sampler_name="Euler", steps=2, width=64, height=64, seed=1, prompt="a cat", cfg_scale=5)
    if tab == "txt2img":
        p = processing.StableDiffusionProcessingTxt2Img(**base, **kwargs)
    else:
        p = processing.StableDiffusionProcessingImg2Img(**base, **kwargs)
    result = processing.process_images(p)
    return inputs[0][:1].double(), result.infotexts[0], p


def test_sgm_noise_multiplier_scales_the_start(flavour):
    from modules import shared
    from modules.shared import opts
    plain, info_plain, _ = first_unet_input()
    opts.sgm_noise_multiplier = True
    sgm, info_sgm, p = first_unet_input()
    sigma0 = float(harness.schedule(shared.sd_model.forge_objects.unet).automatic_sigmas(2)[0])
    assert torch.allclose(sgm, plain / sigma0 * math.sqrt(1.0 + sigma0 ** 2), rtol=1e-6, atol=0)
    assert "SGM noise multiplier" not in info_plain and "SGM noise multiplier: True" in info_sgm
    assert p.extra_generation_params["SGM noise multiplier"] is True


def test_sgm_noise_multiplier_is_ignored_by_img2img(flavour):
    from modules.shared import opts
    latent = torch.linspace(-1, 1, 4 * 8 * 8).reshape(1, 4, 8, 8)
    plain, _, _ = first_unet_input("img2img", init_latent=latent, denoising_strength=0.5)
    opts.sgm_noise_multiplier = True
    sgm, info, p = first_unet_input("img2img", init_latent=latent, denoising_strength=0.5)
    assert torch.equal(plain, sgm) and "SGM noise multiplier" not in info
    assert "SGM noise multiplier" not in p.extra_generation_params


# --- toy VAE: images_tensor_to_samples ----------------------------------------------------------------

def toy_latent_by_hand(image, seed, scale):
    from standin_core.vae import toy_encoder_weights
    weight, bias = (t.double() for t in toy_encoder_weights(seed))
    b, c, h, w = image.shape
    pooled = (image.double() * 2 - 1).reshape(b, c, h // 8, 8, w // 8, 8).mean(dim=(3, 5))
    return (torch.einsum("oc,bchw->bohw", weight, pooled) + bias[None, :, None, None]) * scale


@pytest.mark.parametrize("family, scale", [("sd15", 0.18215), ("sdxl", 0.13025)])
def test_images_tensor_to_samples_is_the_toy_formula(flavour, family, scale):
    from modules import sd_samplers_common
    model = harness.load_model(family, seed=3)
    torch.manual_seed(2)
    image = torch.rand(2, 3, 16, 24)
    latent = sd_samplers_common.images_tensor_to_samples(image)            # opts.sd_vae_encode_method: Full
    assert latent.shape == (2, 4, 2, 3) and latent.dtype == torch.float32
    assert torch.allclose(latent.double(), toy_latent_by_hand(image, 3, scale), rtol=0, atol=1e-6)
    single = sd_samplers_common.images_tensor_to_samples(image[1:], 0, model)
    assert single.is_inference() and torch.allclose(single[0], latent[1], rtol=0, atol=1e-6)
    assert model.get_first_stage_encoding(latent) is latent                 # the engines scale in encode_first_stage


def test_encode_split_per_fork(flavour):
    model = harness.load_model("sd15")
    x = torch.zeros(1, 3, 8, 8)
    if flavour == "forge":
        assert model.forge_objects.vae.first_stage_model.scaling_factor == 0.18215
        assert "encode_first_stage" not in vars(model) and "get_first_stage_encoding" not in vars(model)
    else:
        assert model.forge_objects.unet.model.model_config.latent_format.scale_factor == 0.18215
        assert "encode_first_stage" in vars(model) and "get_first_stage_encoding" in vars(model)
    unscaled = model.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
    assert torch.allclose(model.encode_first_stage(x), unscaled * 0.18215, rtol=1e-7, atol=0)


def test_approximation_indexes_and_refusals(flavour):
    from modules import sd_samplers_common
    from modules.shared import opts
    expected = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}
    if flavour == "reforge":
        expected["Approx PCA"] = 4
    assert sd_samplers_common.approximation_indexes == expected and opts.sd_vae_encode_method == "Full"
    harness.load_model("sd15")
    with pytest.raises(NotImplementedError, match="TAESD"):
        sd_samplers_common.images_tensor_to_samples(torch.rand(1, 3, 8, 8), 3)
    with pytest.raises(ValueError, match="multiple of 8"):
        sd_samplers_common.images_tensor_to_samples(torch.rand(1, 3, 12, 8))


def test_model_sampling_on_a_patcher_without_get_model_object():
    """Forge Classic (1f95d717, early 2025) keeps reForge's ldm_patched backend, but its ModelPatcher has no
    get_model_object: the model's own model_sampling is used, or an object patch of it when one is set."""
    import types

    with harness.use_flavour("reforge"):
        from lib_omost.forge import webui
        own, patched = object(), object()
        unet = types.SimpleNamespace(model=types.SimpleNamespace(model_sampling=own), object_patches={})
        assert webui.model_sampling(unet) is own
        unet.object_patches["model_sampling"] = patched
        assert webui.model_sampling(unet) is patched


def test_attention_without_a_precision_argument_is_called_without_one(monkeypatch):
    """Forge Classic's optimized_attention(q, k, v, heads, mask=None) takes no attn_precision (reForge's does)."""
    with harness.use_flavour("reforge"):
        from ldm_patched.ldm.modules import attention as backend_attention

        from lib_omost.forge import webui
        calls = []
        monkeypatch.setattr(backend_attention, "optimized_attention",
                            lambda q, k, v, heads, mask=None: calls.append(heads) or q)
        q = torch.zeros(1, 4, 8)
        assert webui.attention_function()(q, q, q, 2, {"attn_precision": torch.float32}) is q
        assert calls == [2]
