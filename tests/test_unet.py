"""UNet shapes and time conditioning; ScoreModel denoiser contract and training loss."""

import math

import pytest
import torch

from sirf_diffusion.diffusion.adapters import EpsDenoiser
from sirf_diffusion.diffusion.model import ScoreModel, ScoreModelConfig
from sirf_diffusion.diffusion.schedules import ContinuousVP
from sirf_diffusion.diffusion.unet import UNet, UNetConfig

# Tiny models run fastest on one thread (and the machine is shared); restored after.
pytestmark = pytest.mark.usefixtures("one_thread_module")


TINY = UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                  attention_resolutions=(4,), groupnorm_groups=4)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter (the zero-initialised output layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("hw", [(16, 16), (8, 24), (24, 12)])
def test_unet_shapes_square_and_rectangular(hw):
    net = UNet(TINY)
    x = torch.randn(3, 1, *hw)
    assert net(x, torch.rand(3)).shape == (3, 1, *hw)


def test_default_unet_is_compact_and_takes_pet_slices():
    net = UNet(UNetConfig())
    n = sum(p.numel() for p in net.parameters())
    assert 1_000_000 <= n <= 2_000_000
    with torch.no_grad():
        for hw in [(112, 112), (80, 112), (96, 112)]:
            assert net(torch.zeros(1, 1, *hw), torch.zeros(1)).shape == (1, 1, *hw)


def test_output_layer_zero_initialised():
    net = UNet(TINY)
    assert torch.count_nonzero(net(torch.randn(2, 1, 8, 8), torch.rand(2))) == 0


def test_time_conditioning_changes_output():
    net = UNet(TINY)
    _randomise(net)
    x = torch.randn(1, 1, 16, 16).expand(2, 1, 16, 16)
    y = net(x, torch.tensor([0.1, 0.9]))
    assert (y[0] - y[1]).abs().max() > 1e-3 * y.abs().max()
    y2 = net(x, torch.tensor([0.1, 0.1]))
    assert torch.allclose(y2[0], y2[1], atol=1e-6)  # same t, same x -> same output
    assert net(x, torch.tensor(0.3)).shape == x.shape  # scalar t broadcasts


def test_batch_elements_independent():
    """GroupNorm normalises per sample: an element's output ignores the rest of the batch."""
    net = UNet(TINY)
    _randomise(net, 1)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    assert torch.allclose(net(x, t)[1:2], net(x[1:2], t[1:2]), atol=1e-5)


@pytest.mark.parametrize("hw", [(18, 16), (16, 10), (7, 7)])
def test_bad_sizes_refused(hw):
    with pytest.raises(ValueError, match="not divisible by 4"):
        UNet(TINY)(torch.zeros(1, 1, *hw), torch.zeros(1))


def test_bad_inputs_and_configs_refused():
    net = UNet(TINY)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        net(torch.zeros(1, 2, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="groupnorm_groups"):
        UNetConfig(base_channels=10, groupnorm_groups=4)
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNetConfig(channel_mults=(1, 2), attention_resolutions=(8,))
    with pytest.raises(ValueError, match="unknown UNetConfig"):
        UNetConfig.from_dict({"base_chanels": 8})


# ---------------------------------------------------------------------------- ScoreModel
def _model(parametrisation="eps"):
    return ScoreModel(ScoreModelConfig(unet=TINY, image_size=(16, 16),
                                       parametrisation=parametrisation))


def test_score_model_is_the_eps_adapter_of_its_unet():
    m = _model()
    m.precision = "fp32"  # compared with the plain float32 UNet below
    _randomise(m)
    x, sigma = torch.randn(3, 1, 16, 16), torch.tensor([0.05, 1.0, 30.0])
    ref = EpsDenoiser(m.unet, ContinuousVP())(x, sigma)
    assert torch.allclose(m(x, sigma), ref)
    # untrained (zero output) eps-network: D(x, sigma) = x
    assert torch.equal(_model()(x, sigma), x)


def test_training_loss_reproducible_and_differentiable():
    m = _model()
    _randomise(m)
    x0 = torch.randn(4, 1, 16, 16)
    l1 = m.training_loss(x0, torch.Generator().manual_seed(5))
    l2 = m.training_loss(x0, torch.Generator().manual_seed(5))
    l3 = m.training_loss(x0, torch.Generator().manual_seed(6))
    assert torch.isfinite(l1) and l1.ndim == 0
    assert torch.equal(l1, l2) and not torch.equal(l1, l3)
    l1.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_training_loss_of_zero_network_is_target_power():
    """A zero-output network's loss is mean(target^2): E[eps^2] = 1; for v with x0 = 0,
    E[v^2] = E_t[alpha_bar(t)], t ~ U(t_min, 1) (integrated numerically)."""
    n = 256 * 256
    x0 = torch.zeros(256, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        loss = float(_model().double().training_loss(x0, torch.Generator().manual_seed(0)))
        loss_v = float(_model("v").double().training_loss(x0, torch.Generator().manual_seed(0)))
    assert abs(loss - 1.0) < 5 * math.sqrt(2 / n)
    t = torch.linspace(1e-3, 1.0, 20001, dtype=torch.float64)
    expected = float(torch.trapezoid(ContinuousVP().alpha_bar(t), t) / (1 - 1e-3))
    # 256 draws of t: the standard error of E_t[alpha_bar] dominates (alpha_bar in [0, 1])
    assert abs(loss_v - expected) < 5 * 0.5 / math.sqrt(256)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # emitted by torch's compile imports
def test_compile_option_keeps_state_dict_names():
    m = ScoreModel(ScoreModelConfig(unet=TINY, image_size=(16, 16)), compile=True)
    assert list(m.state_dict()) == list(_model().state_dict())  # compiled lazily: not run here


def test_training_loss_refuses_wrong_layout():
    with pytest.raises(ValueError, match="training_loss expects"):
        _model().training_loss(torch.zeros(2, 16, 16), torch.Generator())


def test_config_validation_and_round_trip():
    cfg = ScoreModelConfig(unet=TINY, image_size=(16, 12), orientation="yz",
                           training_data={"n": 3})
    back = ScoreModelConfig.from_dict(cfg.to_dict())
    assert back == cfg
    with pytest.raises(ValueError, match="orientation"):
        ScoreModelConfig(orientation="zx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not divisible"):
        ScoreModelConfig(unet=TINY, image_size=(18, 16))
    with pytest.raises(ValueError, match="parametrisation"):
        ScoreModelConfig(parametrisation="x0")  # type: ignore[arg-type]


def test_ddpm_schedule_model_sees_unit_time():
    """With a DDPM schedule the UNet is fed t / (T - 1), like the continuous model's t."""
    cfg = ScoreModelConfig(unet=TINY, image_size=(8, 8),
                           schedule={"kind": "ddpm_linear", "num_train_steps": 1000,
                                     "beta_start": 1e-4, "beta_end": 0.02})
    m = ScoreModel(cfg)
    seen = []
    m.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    sigma = m.schedule.sigma(torch.tensor([999.0, 0.0]))
    m(torch.zeros(2, 1, 8, 8), sigma)
    assert torch.allclose(seen[0], torch.tensor([1.0, 0.0]), atol=1e-5)
    loss = m.training_loss(torch.zeros(3, 1, 8, 8), torch.Generator().manual_seed(0))
    assert 0.0 <= float(seen[1].min()) and float(seen[1].max()) <= 1.0 and torch.isfinite(loss)
