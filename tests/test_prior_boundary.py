"""The prior boundary: any in-plane grid (pad with zero activity, crop back), 3D slicing of odd
volumes, the voxel-size check and the resampling option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_parameters

from sirf_diffusion.diffusion import (
    PerpendicularPrior3D,
    ResampledDenoiser,
    ScoreModel,
    ScoreModelConfig,
)
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
        randomise_parameters(m, seed, scale=0.2)
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
    m.precision = "fp32"  # bit-identity with the plain float32 UNet below
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


# ------------------------------------------------------------------ voxel size: resampling
class Recording:
    """Identity denoiser that records the grids and noise levels it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), sigma))
        return x


def test_overlap_matrix_is_value_preserving_and_exact_for_whole_voxels():
    from sirf_diffusion.diffusion.resampling import overlap_matrix, resampled_size

    assert resampled_size(181, 1.0, 2.0) == 90 and resampled_size(127, 4.0, 2.0) == 254
    down = overlap_matrix(8, 1.0, 4, 2.0)
    torch.testing.assert_close(down, torch.kron(torch.eye(4), torch.full((1, 2), 0.5)).double())
    up = overlap_matrix(4, 2.0, 8, 1.0)
    torch.testing.assert_close(up, torch.kron(torch.eye(4), torch.ones(2, 1)).double())
    odd = overlap_matrix(181, 2.08626, 189, 2.0)  # rows inside the image sum to 1
    torch.testing.assert_close(odd.sum(1)[2:-2], torch.ones(185, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        overlap_matrix(0, 1.0, 4, 2.0)


def test_resampled_denoiser_sees_the_prior_grid_and_maps_back():
    rec = Recording()
    D = ResampledDenoiser(rec, (2.0, 1.0, 1.0), (2.0, 2.0, 2.0))  # in-plane 2:1
    x = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 1, 4, 3)
    x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # constant on 2 x 2 blocks
    sigma = torch.tensor([1.0, 4.0], dtype=torch.float64)
    out = D(x, sigma)
    (shape, s), = rec.calls
    assert shape == (2, 1, 4, 3)  # the prior's grid
    torch.testing.assert_close(s, sigma / 2)  # averaging 4 voxels halves white noise
    torch.testing.assert_close(out, x)  # block-constant images survive the round trip
    # the same voxel size: nothing changes
    same = ResampledDenoiser(Recording(), (2.0, 2.0, 2.0), (2.0, 2.0, 2.0))
    assert torch.equal(same(x, sigma), x)
    # a volume with all three axes resampled (a perpendicular prior with yz/xz models)
    rec3 = Recording()
    D3 = ResampledDenoiser(rec3, (1.0, 1.0, 4.0), (2.0, 2.0, 2.0), axes=(0, 1, 2))
    v = torch.ones(1, 1, 6, 8, 5, dtype=torch.float64)
    out3 = D3(v, 1.0)
    assert rec3.calls[0][0] == (1, 1, 3, 4, 10)
    torch.testing.assert_close(out3, v)
    with pytest.raises(ValueError, match="image_voxel_size_mm"):
        ResampledDenoiser(rec, (2.0, 0.0, 1.0), (2.0, 2.0, 2.0))


def test_noise_gain_matches_the_measured_noise():
    """g sigma is the standard deviation of resampled white noise, also for non-integer ratios."""
    rec = Recording()
    D = ResampledDenoiser(rec, (2.0, 2.0, 2.0), (2.0, 2.7, 3.1))
    noise = torch.randn(1, 1, 400, 400, generator=torch.Generator().manual_seed(9),
                        dtype=torch.float64)
    D(noise, 1.0)
    fwd_y, _, _ = D._matrices(1, 400, noise)
    fwd_x, _, _ = D._matrices(2, 400, noise)
    resampled = fwd_y @ noise[0, 0] @ fwd_x.T
    inner = resampled[5:-5, 5:-5]
    assert float(rec.calls[0][1]) == pytest.approx(float(inner.std()), rel=0.03)


# ----------------------------------------------------------------- voxel size: the check
MMR = (2.03125, 2.08626, 2.08626)


def test_check_accepts_the_training_voxel_size_and_any_grid_size(shipped):
    from sirf_diffusion.diffusion import check_prior_grid

    for shape in [(1, 127, 127), (1, 112, 96), (1, 120, 135), (1, 9, 9)]:
        assert check_prior_grid(shipped, shape, MMR) == []
    assert check_prior_grid(shipped, (1, 127, 127), (1.0, 2.2, 1.95)) == []  # z unseen; < 10 %
    prior3d = PerpendicularPrior3D({"xy": shipped})
    assert check_prior_grid(prior3d, (127, 127, 127), (2.03125, 2.08626, 2.08626)) == []


def test_check_warns_for_another_voxel_size_naming_both(shipped):
    from sirf_diffusion.diffusion import check_prior_grid

    msgs = check_prior_grid(shipped, (1, 61, 61), (2.03125, 4.0, 4.0))
    assert len(msgs) == 1
    assert "(2.03125, 4, 4) mm" in msgs[0] and "(2.03125, 2.08626, 2.08626) mm" in msgs[0]
    assert "resample=True" in msgs[0] and "92%" in msgs[0]
    # a 3D prior with a yz model sees z as well
    models = {"xy": tiny_model("xy"), "yz": tiny_model("yz", 1)}
    msgs = check_prior_grid(PerpendicularPrior3D(models), (15, 9, 7), (3.0, 2.0, 2.0))
    assert len(msgs) == 1 and "yz prior" in msgs[0] and "along z" in msgs[0]
    unknown = tiny_model(voxel_size_mm=None)
    assert "records no training voxel size" in check_prior_grid(unknown, (1, 9, 9), MMR)[0]


def test_check_refuses_what_cannot_run(shipped):
    from sirf_diffusion.diffusion import check_prior_grid

    with pytest.raises(ValueError, match="slice .2D. prior cannot denoise a volume of 127"):
        check_prior_grid(shipped, (127, 181, 181), MMR)
    with pytest.raises(ValueError, match="single slice"):
        check_prior_grid(PerpendicularPrior3D({"xy": shipped}), (1, 181, 181), MMR)
    with pytest.raises(ValueError, match="voxel_size_mm"):
        check_prior_grid(shipped, (1, 181, 181), (2.0, -1.0, 2.0))
    with pytest.raises(ValueError, match="voxel_size_mm"):
        check_prior_grid(shipped, (1, 181, 181), (2.0, 2.0))
    with pytest.raises(ValueError, match="image_shape"):
        check_prior_grid(shipped, (181, 181), MMR)


def test_fit_warns_or_resamples(shipped):
    from sirf_diffusion.diffusion import fit_prior_to_grid

    with pytest.warns(UserWarning, match=r"\(2.03125, 1, 1\) mm differs"):
        same = fit_prior_to_grid(shipped, (1, 181, 181), (2.03125, 1.0, 1.0))
    assert same is shipped
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D = fit_prior_to_grid(shipped, (1, 181, 181), (2.03125, 1.0, 1.0), resample=True)
        assert fit_prior_to_grid(shipped, (1, 127, 127), MMR) is shipped
    assert isinstance(D, ResampledDenoiser) and D.axes == (1, 2)
    assert D.prior_voxel_size_mm == MMR
    x = torch.randn(1, 1, 181, 181, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        out = D(x, torch.tensor([2.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="records no training voxel size"):
        fit_prior_to_grid(tiny_model(voxel_size_mm=None), (1, 9, 9), MMR, resample=True)


def test_shipped_prior_records_its_training_voxel_size(shipped):
    from sirf_diffusion.diffusion.grid import prior_voxel_size, training_voxel_size

    assert training_voxel_size(shipped) == MMR
    assert prior_voxel_size(PerpendicularPrior3D({"xy": shipped})) == MMR
    with pytest.raises(ValueError, match="different voxel sizes"):
        prior_voxel_size(PerpendicularPrior3D({"xy": tiny_model("xy"),
                                               "yz": tiny_model("yz", voxel_size_mm=MMR)}))


# ------------------------------------------------------------- field of view: the window
def test_object_window_holds_the_object_and_the_training_field_of_view():
    from sirf_diffusion.diffusion import object_window

    support = torch.zeros(3, 181, 181, dtype=torch.bool)
    support[1, 40:150, 60:120] = True  # an object off centre
    top, left, h, w = object_window(support, (112, 112))
    assert (h, w) == (120, 112)  # 110 + 2 * 4 rounded up to 8; at least 112
    assert top <= 40 - 4 and top + h >= 150 + 4 and left <= 60 and left + w >= 120
    assert object_window(support, (112, 112), multiple=1)[2:] == (118, 112)
    at_edge = torch.zeros(181, 181, dtype=torch.bool)
    at_edge[170:, :20] = True
    top, left, h, w = object_window(at_edge, (112, 112))
    assert (top + h, left) == (181, 0)  # shifted into the grid
    assert object_window(torch.ones(100, 100, dtype=torch.bool), (112, 112)) is None
    with pytest.raises(ValueError, match="empty"):
        object_window(torch.zeros(9, 9, dtype=torch.bool), (4, 4))
    with pytest.raises(ValueError, match="boolean"):
        object_window(torch.ones(9, 9), (4, 4))


def test_windowed_denoiser_is_zero_activity_outside_the_window():
    from sirf_diffusion.diffusion import WindowedDenoiser

    m = tiny_model()
    D = WindowedDenoiser(m, (3, 5, 8, 12))
    assert D.models == {"xy": m}
    x = torch.randn(2, 1, 17, 19, generator=torch.Generator().manual_seed(11))
    s = torch.tensor([0.5, 2.0])
    with torch.no_grad():
        out = D(x, s)
        inside = m(x[..., 3:11, 5:17], s)
    assert torch.equal(out[..., 3:11, 5:17], inside)
    out[..., 3:11, 5:17] = 0
    assert not out.any()
    v = torch.randn(1, 1, 4, 17, 19, generator=torch.Generator().manual_seed(12))
    D3 = WindowedDenoiser(PerpendicularPrior3D({"xy": m}), (3, 5, 8, 12))
    with torch.no_grad():
        assert D3(v, 1.0).shape == v.shape
    with pytest.raises(ValueError, match="does not fit"):
        D(torch.zeros(1, 1, 10, 10), 1.0)


def test_a_large_field_of_view_warns_and_a_support_windows_it(shipped):
    import warnings

    from sirf_diffusion.diffusion import WindowedDenoiser, check_prior_grid, fit_prior_to_grid

    for n in (181, 285):
        msgs = check_prior_grid(shipped, (1, n, n), MMR)
        assert len(msgs) == 1 and "field of view" in msgs[0] and "support=" in msgs[0]
    assert "378 x 378 mm is 1.6 times the 234 x 234 mm" in check_prior_grid(
        shipped, (1, 181, 181), MMR)[0]
    _, head = head_image(181)
    support = torch.zeros(1, 181, 181, dtype=torch.bool)
    support[0, 20:120, 30:100] = head[40:140, 55:125]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D = fit_prior_to_grid(shipped, (1, 181, 181), MMR, support=support)
        small = fit_prior_to_grid(shipped, (1, 127, 127), MMR, support=support[..., :127, :127])
        assert fit_prior_to_grid(shipped, (1, 112, 112), MMR,
                                 support=support[..., :112, :112]) is shipped  # whole grid
    assert small.window[2:] == (112, 112)  # a support always windows to the prior's view
    assert isinstance(D, WindowedDenoiser) and D.window[2:] == (112, 112)
    assert check_prior_grid(D, (1, 181, 181), MMR) == []
    # resampling and windowing together: the window (image voxels) spans the prior's 234 mm
    big = torch.zeros(1, 285, 285, dtype=torch.bool)
    big[0, 100:200, 90:180] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D2 = fit_prior_to_grid(shipped, (1, 285, 285), (2.0, 1.5, 1.5), resample=True,
                               support=big)
    assert isinstance(D2, WindowedDenoiser) and isinstance(D2.denoiser, ResampledDenoiser)
    assert D2.window[2:] == (160, 160)  # ceil(112 * 2.08626 / 1.5) = 156, rounded up to 8
    with torch.no_grad():
        v = torch.randn(1, 1, 285, 285, generator=torch.Generator().manual_seed(14))
        assert D2(v, torch.tensor([1.0])).shape == v.shape
    x = torch.randn(1, 1, 181, 181, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        assert D(x, torch.tensor([1.0])).shape == x.shape
    with pytest.raises(ValueError, match="does not match the image"):
        fit_prior_to_grid(shipped, (1, 181, 181), MMR, support=support[..., :100, :])
