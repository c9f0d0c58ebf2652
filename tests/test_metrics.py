"""Image-quality metrics on hand-checkable cases and independent direct computations."""

import math

import numpy as np
import pytest
import torch

from sirf_diffusion.metrics import (
    background_variability,
    bias_variance,
    coefficient_of_variation,
    crc,
    metrics_table,
    nrmse,
    psnr,
    roi_bias_std,
    ssim,
)


def _img(seed=0, shape=(1, 16, 16)):
    return np.random.default_rng(seed).random(shape) + 0.5


def test_identical_images():
    ref = _img()
    assert nrmse(ref, ref) == 0.0
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert psnr(ref, ref) == math.inf


def test_nrmse_and_psnr_closed_forms_with_mask_torch_and_batch():
    ref = np.zeros((1, 4, 4))
    ref[0, 1:3, 1:3] = 2.0
    mask = ref > 0
    x = ref + 0.5 * mask + 7.0 * ~mask  # error 0.5 inside the mask, large outside (ignored)
    assert nrmse(x, ref, mask) == pytest.approx(0.25)           # ||0.5|| / ||2||
    assert psnr(x, ref, mask) == pytest.approx(10 * math.log10(4 / 0.25))
    assert nrmse(torch.from_numpy(x).float(), torch.from_numpy(ref), torch.from_numpy(mask)) == \
        pytest.approx(0.25, rel=1e-6)
    batch = np.stack([ref, x])
    out = nrmse(batch, ref, mask)
    assert isinstance(out, np.ndarray) and out.shape == (2,)
    assert out == pytest.approx([0.0, 0.25])


def test_ssim_of_constant_images_is_the_luminance_term():
    ref, x = np.full((1, 12, 12), 2.0), np.full((1, 12, 12), 1.0)
    c1, c2 = (0.01 * 3.0) ** 2, (0.03 * 3.0) ** 2
    expected = (2 * 2 * 1 + c1) / (4 + 1 + c1) * (c2 / c2)
    assert ssim(x, ref, data_range=3.0) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_ssim_matches_direct_window_computation(spatial_dims):
    """SSIM at the centre voxel from explicit Gaussian window weights (no padding involved)."""
    rng = np.random.default_rng(1)
    shape = (21, 17, 17)
    ref = rng.random(shape) + 0.5
    x = ref + 0.3 * rng.standard_normal(shape)
    sigma = 1.5
    radius = int(3.5 * sigma + 0.5)  # 5: an 11-voxel window per axis
    c = (10, 8, 8)
    offs = np.arange(-radius, radius + 1)
    w1 = np.exp(-offs**2 / (2 * sigma**2))
    if spatial_dims == 2:
        w = np.einsum("j,k->jk", w1, w1)[None]
        zsl = slice(c[0], c[0] + 1)
    else:
        w = np.einsum("i,j,k->ijk", w1, w1, w1)
        zsl = slice(c[0] - radius, c[0] + radius + 1)
    w = w / w.sum()
    win = (zsl, slice(c[1] - radius, c[1] + radius + 1), slice(c[2] - radius, c[2] + radius + 1))
    xr, rr = x[win], ref[win]
    mx, mr = (w * xr).sum(), (w * rr).sum()
    vx, vr = (w * xr**2).sum() - mx**2, (w * rr**2).sum() - mr**2
    cov = (w * xr * rr).sum() - mx * mr
    d = 2.0
    c1, c2 = (0.01 * d) ** 2, (0.03 * d) ** 2
    expected = (2 * mx * mr + c1) * (2 * cov + c2) / ((mx**2 + mr**2 + c1) * (vx + vr + c2))
    mask = np.zeros(shape, dtype=bool)
    mask[c] = True
    got = ssim(x, ref, mask, data_range=d, spatial_dims=spatial_dims)
    assert got == pytest.approx(expected, rel=1e-10)


def test_ssim_decreases_with_noise():
    ref = _img(2, (1, 32, 32))
    rng = np.random.default_rng(3)
    s = [ssim(ref + a * rng.standard_normal(ref.shape), ref) for a in (0.05, 0.2, 0.5)]
    assert s[0] > s[1] > s[2]


def test_crc_on_a_synthetic_lesion():
    true = np.ones((1, 20, 20))
    lesion = np.zeros(true.shape, dtype=bool)
    lesion[0, 8:12, 8:12] = True
    true[lesion] = 4.0
    bg = ~lesion
    assert crc(true, lesion, bg, 4.0) == pytest.approx(1.0)
    # a reconstruction recovering half the contrast: lesion 2.5 on background 1
    rec = np.where(lesion, 2.5, 1.0)
    assert crc(rec, lesion, bg, 4.0) == pytest.approx(0.5)
    # scale invariance and batched torch input
    out = crc(torch.from_numpy(np.stack([3 * rec, true])), torch.from_numpy(lesion), bg, 4.0)
    assert out == pytest.approx([0.5, 1.0])


def test_background_variability_and_cov():
    x = np.ones((1, 10, 10))
    rois = [np.zeros(x.shape, dtype=bool) for _ in range(3)]
    for i, (a, b) in enumerate([(0, 3), (3, 6), (6, 9)]):
        rois[i][0, a:b, :] = True
    x[0, 3:6] = 2.0
    x[0, 6:9] = 3.0
    means = np.array([1.0, 2.0, 3.0])
    assert background_variability(x, rois) == pytest.approx(means.std(ddof=1) / means.mean())
    assert background_variability(x, np.stack(rois)) == pytest.approx(0.5)
    vals = x[0, :9].ravel()
    mask = np.zeros(x.shape, dtype=bool)
    mask[0, :9] = True
    assert coefficient_of_variation(x, mask) == pytest.approx(vals.std(ddof=1) / vals.mean())


def test_bias_variance_over_realisations():
    rng = np.random.default_rng(4)
    ref = _img(5, (1, 8, 8))
    noise = rng.standard_normal((50, 1, 8, 8))
    noise -= noise.mean(axis=0)
    reals = ref + 0.1 + 0.2 * noise  # bias exactly 0.1, zero-mean noise
    bv = bias_variance(reals, ref)
    assert np.allclose(bv.bias, 0.1)
    assert np.allclose(bv.variance, (0.2 * noise).var(axis=0, ddof=1))
    assert bv.nrms_bias == pytest.approx(0.1 * 8 / np.sqrt((ref**2).sum()))
    # decomposition: mean over realisations of NRMSE^2 = bias^2 + std^2 (R-1)/R
    mean_sq = np.mean([nrmse(r, ref) ** 2 for r in reals])
    assert mean_sq == pytest.approx(bv.nrms_bias**2 + bv.nrms_std**2 * 49 / 50)
    roi = np.zeros(ref.shape, dtype=bool)
    roi[0, 2:4, 2:4] = True
    b, s = roi_bias_std(reals, ref, roi)
    means = reals[:, roi].mean(axis=1)
    assert b == pytest.approx((means.mean() - ref[roi].mean()) / ref[roi].mean())
    assert s == pytest.approx(means.std(ddof=1) / ref[roi].mean())


def test_metrics_table_markdown():
    table = metrics_table({"OSEM": {"NRMSE": 0.123456, "SSIM": 0.9},
                           "MAP-EM": {"SSIM": 0.95, "CRC": 0.8}}, precision=3)
    lines = table.splitlines()
    assert lines[0] == "| method | NRMSE | SSIM | CRC |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| OSEM | 0.123 | 0.9 |  |"
    assert lines[3] == "| MAP-EM |  | 0.95 | 0.8 |"


def test_bad_input_is_named():
    ref = _img()
    with pytest.raises(ValueError, match="mask"):
        nrmse(ref, ref, np.zeros(ref.shape, dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        nrmse(np.ones((1, 3, 3)), ref)
    with pytest.raises(ValueError, match="zero"):
        nrmse(ref, np.zeros_like(ref))
    with pytest.raises(ValueError, match="NaN"):
        psnr(ref * np.nan, ref)
    with pytest.raises(ValueError, match="true_ratio"):
        crc(ref, ref > 1, ref <= 1, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        background_variability(ref, [ref > 1])
    with pytest.raises(ValueError, match="realisations"):
        bias_variance(ref[None], ref)
    with pytest.raises(ValueError, match="spatial_dims"):
        ssim(ref, ref, spatial_dims=4)
    with pytest.raises(TypeError, match="rows"):
        metrics_table([1, 2])


def test_image_metrics_of_a_zero_image_has_nan_crc_not_an_error():
    from sirf_diffusion.metrics import image_metrics

    ref = np.ones((1, 16, 16))
    hot = np.zeros_like(ref, dtype=bool)
    hot[0, 6:9, 6:9] = True
    ref[hot] = 4.0
    masks = {"brain": np.ones_like(ref, dtype=bool), "lesion_hot": hot}
    m = image_metrics(np.zeros_like(ref), ref, masks)
    assert np.isnan(m["crc_hot"]) and m["nrmse"] == pytest.approx(1.0)
    assert image_metrics(ref, ref, masks)["crc_hot"] == pytest.approx(1.0)
