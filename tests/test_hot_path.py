"""The per-call path of the attention stages: no host-device synchronisation per layer (the sigma of a UNet
forward is read once, however many layers and stages ask), and what depends only on sizes is built once."""

import pytest
import torch

from lib_omost.attention.plan import ATTN1, ATTN2, AttentionPlan, HostSigma
from lib_omost.forge.pass_plan import install_plan
from tests.standin import harness


class CountingTensor(torch.Tensor):
    """A tensor that counts the reductions that read it to the host (``max``, ``item``, ``tolist``)."""
    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.max, torch.Tensor.item, torch.Tensor.tolist, torch.max):
            CountingTensor.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class ProbeStage:
    """Asks for the call's sigma in ``active`` and again in the call, on every layer."""
    name, exclusive, order = "probe", None, 50

    def __init__(self, target):
        self.target, self.calls = target, 0

    def applies(self, layer):
        return True

    def active(self, call):
        return call.sigma is not None

    def __call__(self, q, k, v, call, inner):
        assert call.sigma == 3.0
        self.calls += 1
        return inner(q, k, v, call)

    def patch(self, n, context, value, call):
        assert call.sigma == 3.0
        self.calls += 1
        return n, context, value


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_one_read_of_the_sigma_per_unet_forward(flavour, grad_mode):
    with harness.use_flavour(flavour):
        from lib_omost.forge.webui import model_info
        sd_model = harness.make_sd_model("sd15")
        unet = sd_model.forge_objects.unet.clone()
        info = model_info(sd_model, unet)
        stages = [ProbeStage(ATTN1), ProbeStage(ATTN2)]
        pre = ProbeStage(ATTN1)
        install_plan(unet, AttentionPlan().with_feature("probe", stages, [pre]), info)
        dm = unet.model.diffusion_model
        context = torch.randn(2, 77, 16)                                  # the toy SD1.5 context width
        for forward in range(2):
            CountingTensor.reads = 0
            with grad_mode():           # the WebUIs sample under no_grad or inference_mode
                sigmas = torch.tensor([3.0, 3.0]).as_subclass(CountingTensor)
                options = {**unet.model_options["transformer_options"], "sigmas": sigmas, "cond_or_uncond": [1, 0]}
                dm(torch.randn(2, 4, 8, 8), timesteps=torch.tensor([500.0, 500.0]), context=context,
                   transformer_options=options)
            assert CountingTensor.reads == 1, forward                 # not once per layer and stage
            assert [s.calls for s in (*stages, pre)] == [len(info.layers) * (forward + 1)] * 3


def test_host_sigma_reads_a_new_or_changed_tensor_again():
    sigma_of = HostSigma()
    sigmas = torch.tensor([2.0, 5.0])
    assert sigma_of(sigmas) == sigma_of(sigmas) == 5.0 and sigma_of.reads == 1
    sigmas.mul_(2)                                                    # changed in place
    assert sigma_of(sigmas) == 10.0 and sigma_of.reads == 2
    assert sigma_of(torch.tensor([1.0])) == 1.0 and sigma_of.reads == 3
    assert sigma_of(None) is None and sigma_of.reads == 3


def test_model_info_computes_each_sigmas_timestep_once():
    from lib_omost.model_info import ModelInfo
    asked = []

    def to_timestep(sigmas):
        asked.append(float(sigmas[0]))
        return sigmas * 100
    info = ModelInfo("sd15", 320, {}, lambda p: p, to_timestep, attention=None)
    assert [info.timestep(s) for s in (1.5, 1.5, 2.0, 1.5)] == [150.0, 150.0, 200.0, 150.0]
    assert asked == [1.5, 2.0]


@pytest.mark.parametrize("method", ["Omost score manipulation", "Attention couple", "Attention couple (overlay)",
                                    "DenseDiffusion"])
def test_regional_layouts_are_built_once_per_layer_size_not_per_call(monkeypatch, method):
    from lib_omost.attention.plan import AttnCall, LayerKey
    from lib_omost.canvas.example import example_canvas
    from lib_omost.features import omost
    from lib_omost.model_info import ModelInfo
    canvas = example_canvas()
    count = 1 + len(canvas.regions)
    regions = omost.token_regions([(r, 77) for r in range(count)])
    built = []
    for name in ("omost_layout", "couple_layout", "dense_cross_layout"):
        original = getattr(omost, name)
        monkeypatch.setattr(omost, name, lambda *a, _f=original, _n=name, **k: built.append(_n) or _f(*a, **k))
    info = ModelInfo("sd15", 8, {}, lambda p: 1.0, lambda s: s * 100, attention=None)
    stage = omost.RegionalStage(canvas, regions, method, 1.0, 0.0, info)
    heads, width = 2, 8
    for _ in range(3):                                           # three steps
        for hw in ((8, 8), (4, 4), (8, 8)):                      # layers of two sizes
            q = torch.randn(2, hw[0] * hw[1], width)
            k, v = torch.randn(2, regions.shape[0], width), torch.randn(2, regions.shape[0], width)
            call = AttnCall(LayerKey("input", 1, 0), heads, hw, (8, 8), [1], [0], torch.tensor([5.0, 5.0]))
            out = stage(q, k, v, call, lambda *a: pytest.fail("the regional path must run"))
            assert out.shape == q.shape
    assert len(built) == 2                                       # one layout per layer size
