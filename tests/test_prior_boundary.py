"""The prior boundary: any in-plane grid (pad with zero activity, crop back), 3D slicing of odd
volumes, the voxel-size check and the resampling option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sirf_diffusion.diffusion import PerpendicularPrior3D, ScoreModel, ScoreModelConfig
from sirf_diffusion.diffusion.adapters import EpsDenoiser
from sirf_diffusion.diffusion.padding import centred_padding, pad_iterate, padding_noise
from sirf_diffusion.diffusion.unet import UNetConfig
from sirf_diffusion.models import default_prior_dir, has_default_prior

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                  attention_resolutions=(4,), groupnorm_groups=4)  # size multiple 4


def tiny_model(orientation: str = "xy", seed: int = 0, trained: bool = True,
               voxel_size_mm: tuple[float, float, float] | None = (2.0, 2.0, 2.0)) -> ScoreModel:
    """A tiny slice model; ``trained``: random non-zero weights (else the fresh network, whose
    zero-initialised output layer makes ``D(x, sigma) = x`` exactly)."""
    data = {} if voxel_size_mm is None else {"voxel_size_mm": list(voxel_size_mm)}
    m = ScoreModel(ScoreModelConfig(unet=TINY, image_size=(8, 8), orientation=orientation,
                                    training_data=data))
    if trained:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def shipped():
    if not has_default_prior("xy"):
        pytest.skip("the shipped prior is not installed")
    from sirf_diffusion.diffusion import load_model

    return load_model(default_prior_dir() / "xy")


def head_image(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised synthetic head ``[1, 1, n, n]`` (zero outside) and its support."""
    c = (n - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(n) - c, torch.arange(n) - c, indexing="ij")
    r = (yy / (0.39 * n)) ** 2 + (xx / (0.31 * n)) ** 2
    head = (r < 1).float()
    x0 = head * (1 + 2 * ((r > 0.75) & (r < 1)).float())
    x0 = x0 + 1.5 * (((yy - 0.08 * n) ** 2 + (xx + 0.1 * n) ** 2) < (0.05 * n) ** 2).float()
    return (x0 / x0[head > 0].mean())[None, None], head > 0


# ------------------------------------------------------------------------------- padding
def test_centred_padding_reaches_the_next_multiple():
    assert centred_padding(112, 8) == (0, 0)
    assert centred_padding(127, 8) == (0, 1)
    assert centred_padding(181, 8) == (1, 2)
    assert centred_padding(285, 8) == (1, 2)
    assert centred_padding(3, 8) == (2, 3)
    with pytest.raises(ValueError, match="positive"):
        centred_padding(0, 8)


@pytest.mark.parametrize("shape", [(127, 127), (181, 181), (285, 285), (127, 181)])
def test_shipped_prior_denoises_any_grid(shipped, shape):
    sigma = torch.tensor([0.5, 5.0])[: 1 if max(shape) > 200 else 2]
    x = torch.randn(len(sigma), 1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = shipped(x, sigma)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_divisible_grid_is_not_padded(shipped):
    x = torch.randn(2, 1, 112, 96, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.3, 3.0])
    with torch.no_grad():
        assert torch.equal(shipped(x, s), shipped._denoise(x, s))


@pytest.mark.parametrize("shape", [(13, 13), (9, 14), (8, 8)])
def test_crop_returns_exactly_the_input_grid(shape):
    """A fresh network predicts eps = 0, so D(x) = x: any misplaced crop would show."""
    m = tiny_model(trained=False)
    x = torch.randn(3, 1, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(m(x, torch.tensor([0.1, 1.0, 10.0])), x)


def test_the_border_is_zero_activity_at_the_iterates_noise_level():
    x = torch.randn(2, 1, 121, 117, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.5, 4.0])
    xp, (top, left) = pad_iterate(x, sigma, 8)
    assert xp.shape == (2, 1, 128, 120) and (top, left) == (3, 1)
    assert torch.equal(xp[..., 3:124, 1:118], x)  # the image itself is untouched
    border = torch.ones(128, 120, dtype=torch.bool)
    border[3:124, 1:118] = False
    n = padding_noise(128, 120)
    for b in range(2):  # sigma * the same fixed standard-normal field for every element
        torch.testing.assert_close(xp[b, 0][border], sigma[b] * n[border])
    assert abs(float(n[border].std()) - 1) < 0.1 and abs(float(n[border].mean())) < 0.1
    xq, _ = pad_iterate(x, sigma, 8)
    assert torch.equal(xp, xq)  # deterministic


def test_padding_does_not_depend_on_the_batch():
    m = tiny_model().double()  # float64: batched and single convolutions round alike
    x = torch.randn(4, 1, 13, 11, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s = torch.tensor([0.1, 0.5, 2.0, 8.0], dtype=torch.float64)
    with torch.no_grad():
        whole = m(x, s)
        parts = torch.cat([m(x[i:i + 1], s[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, parts, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", [2.0, 10.0])
def test_padding_reproduces_the_full_grid_denoiser(shipped, sigma):
    """Cropping a zero-background image to 121 x 121 and padding it back gives nearly the
    denoiser of the full 128 x 128 grid inside the head; plain zero padding does not."""
    x0, head = head_image(128)
    x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    s = torch.tensor([sigma])
    crop = (..., slice(3, 124), slice(3, 124))
    with torch.no_grad():
        full = shipped(x, s)[crop]
        padded = shipped(x[crop], s)
        zeros = shipped(F.pad(x[crop], (3, 4, 3, 4)), s)[crop]
    h = head[3:124, 3:124]

    def rel(d: torch.Tensor) -> float:
        return float((d - full)[0, 0][h].norm() / full[0, 0][h].norm())

    assert rel(padded) < 0.05
    assert rel(padded) < rel(zeros) / 5


def test_adapters_pad_for_a_unet():
    m = tiny_model(trained=True)
    D = EpsDenoiser(m.unet, m.schedule)
    assert D.size_multiple == 4
    x = torch.randn(2, 1, 10, 13, generator=torch.Generator().manual_seed(6))
    s = torch.tensor([0.2, 2.0])
    with torch.no_grad():
        assert torch.equal(D(x, s), m(x, s))
    assert EpsDenoiser(lambda x, t: x).size_multiple == 1
    with pytest.raises(ValueError, match="size_multiple"):
        EpsDenoiser(m.unet, size_multiple=0)


# ------------------------------------------------------------------------------ 3D priors
def test_perpendicular_prior_on_an_odd_volume():
    models = {o: tiny_model(o, seed=i) for i, o in enumerate(("xy", "yz", "xz"))}
    models = {o: m.double() for o, m in models.items()}
    x = torch.randn(2, 1, 13, 27, 19, generator=torch.Generator().manual_seed(7),
                    dtype=torch.float64)
    s = torch.tensor([0.3, 3.0], dtype=torch.float64)
    with torch.no_grad():
        out = PerpendicularPrior3D(models, chunk_size=64)(x, s)
        chunked = PerpendicularPrior3D(models, chunk_size=5)(x, s)
        identity = PerpendicularPrior3D({o: tiny_model(o, trained=False).double()
                                         for o in models})(x, s)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, chunked, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(identity, x, rtol=1e-15, atol=1e-15)  # the mean of 3 x's


def test_shipped_prior_on_a_127_volume(shipped):
    x = torch.randn(1, 1, 3, 127, 127, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = PerpendicularPrior3D({"xy": shipped}, chunk_size=2)(x, torch.tensor([1.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
