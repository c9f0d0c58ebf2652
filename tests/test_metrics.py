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
    lesion_backgrounds,
    lesion_report,
    lesion_verdict,
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


# ----------------------------------------------------------------------------- per lesion
def _two_lesions():
    """Background 2, a hot lesion (label 1, true 6 = 3x) and a cold one (label 3, true 0.5)."""
    labels = np.zeros((1, 24, 24), dtype=np.int64)
    labels[0, 4:8, 4:8] = 1
    labels[0, 14:18, 14:20] = 3
    ref = np.full(labels.shape, 2.0)
    ref[labels == 1] = 6.0
    ref[labels == 3] = 0.5
    return labels, ref


def test_lesion_report_exact_crc_hot_and_cold():
    labels, ref = _two_lesions()
    bg = labels == 0
    # reference: CRC 1, zero bias, true contrasts 3 and 0.25
    hot, cold = lesion_report(ref, ref, labels, bg)
    assert (hot.label, hot.kind, hot.voxels) == (1, "hot", 16)
    assert (cold.label, cold.kind, cold.voxels) == (3, "cold", 24)
    assert hot.true_contrast == pytest.approx(3.0) and cold.true_contrast == pytest.approx(0.25)
    assert hot.crc == pytest.approx(1.0) and cold.crc == pytest.approx(1.0)
    assert hot.bias == 0.0 and cold.bias == 0.0 and hot.std_ratio is None
    # an image with background 4, hot lesion 8 (ratio 2: CRC (2-1)/(3-1) = 0.5) and cold lesion
    # 3.25 (ratio 0.8125: CRC (0.8125-1)/(0.25-1) = 0.25, i.e. (1 - 0.8125)/(1 - 0.25))
    img = np.where(labels == 1, 8.0, np.where(labels == 3, 3.25, 4.0))
    hot, cold = lesion_report(torch.from_numpy(img), ref, labels, bg)
    assert hot.contrast == pytest.approx(2.0) and hot.crc == pytest.approx(0.5)
    assert cold.contrast == pytest.approx(0.8125) and cold.crc == pytest.approx(0.25)
    assert hot.bias == pytest.approx(8.0 / 6.0 - 1) and cold.bias == pytest.approx(5.5)
    # a filled cold lesion (background level: CRC 0), a hot lesion gone cold (negative CRC)
    img = np.where(labels == 1, 1.0, 2.0)
    hot, cold = lesion_report(img, ref, labels, bg)
    assert cold.crc == pytest.approx(0.0) and hot.crc == pytest.approx(-0.25)
    assert (lesion_verdict(hot.kind, hot.crc), lesion_verdict(cold.kind, cold.crc)) == (
        "erased", "filled")


def test_lesion_report_posterior_std_ratio_from_sample_stacks():
    labels, ref = _two_lesions()
    rng = np.random.default_rng(7)
    z = rng.standard_normal(16)
    # samples = mean + z_n * pattern: the std over samples is |pattern| * std(z) voxel by voxel
    pattern = np.where(labels == 1, 3.0, np.where(labels == 3, 0.5, 1.0))
    pattern[0, 0, :] = 2.0  # background std not uniform: its mean over bg enters the ratio
    samples = ref + z[:, None, None, None] * pattern
    std = samples.std(axis=0, ddof=1)
    bg = labels == 0
    s_bg = pattern[bg].mean()
    hot, cold = lesion_report(samples.mean(axis=0), ref, labels, bg, std)
    assert hot.std_ratio == pytest.approx(3.0 / s_bg)
    assert cold.std_ratio == pytest.approx(0.5 / s_bg)
    # per-lesion backgrounds: the shells only see pattern 1
    shells = lesion_backgrounds(labels, np.ones(labels.shape, bool), gap=1, width=2)
    hot, cold = lesion_report(samples.mean(axis=0), ref, labels, shells, std)
    assert hot.std_ratio == pytest.approx(3.0) and cold.std_ratio == pytest.approx(0.5)
    # one sample: zero std, the ratio is undefined (NaN), the CRC is still there
    (hot, _) = lesion_report(samples[0], ref, labels, bg, np.zeros(ref.shape))
    assert math.isnan(hot.std_ratio) and math.isfinite(hot.crc)


def test_lesion_backgrounds_are_local_shells():
    labels, _ = _two_lesions()
    region = np.ones(labels.shape, bool)
    region[0, :, 22:] = False
    shells = lesion_backgrounds(labels, region, gap=1, width=2)
    assert list(shells) == [1, 3]
    from scipy.ndimage import distance_transform_edt

    for k, shell in shells.items():
        d = distance_transform_edt(labels != k)
        assert ((d[shell] > 1) & (d[shell] <= 3)).all()
        assert not (shell & ~region).any() and not (shell & (labels > 0)).any()
        # every voxel of the region in the distance band (and clear of lesions) is in the shell
        clear = distance_transform_edt(labels == 0) > 1
        assert (shell == ((d > 1) & (d <= 3) & clear & region)).all()
    # a whole-image background would be dominated by grey matter: shells see the neighbourhood
    assert shells[1].sum() < 100 and shells[3].sum() < 120


def test_lesion_report_on_a_simulated_phantom():
    from sirf_diffusion.data.phantoms import brain_phantom

    # test subject 10: a hot lesion in grey matter, a cold one in white matter.  (Subject 0's
    # "hot" lesion, twice its white-matter host, is darker than the grey matter around it: the
    # kind comes from the reference, not from the phantom's label.)
    p = brain_phantom(10, dims=2, lesions=2)
    labels = p.lesion_labels()
    shells = lesion_backgrounds(labels, p.masks["brain"])
    rep = lesion_report(p.activity, p.activity, labels, shells)
    assert [r.kind for r in rep] == [les.kind for les in p.lesions] == ["hot", "cold"]
    assert rep[0].true_contrast > 2 and rep[1].true_contrast < 0.5
    assert all(r.crc == pytest.approx(1.0) and r.bias == 0 for r in rep)


def test_lesion_verdict_rule():
    cases = {("hot", 0.05): "erased", ("hot", 0.3): "partly erased", ("hot", 0.5): "recovered",
             ("cold", -0.2): "filled", ("cold", 0.49): "partly filled", ("cold", 1.2): "recovered",
             ("hot", 1.6): "exaggerated", ("cold", 2.0): "exaggerated",
             ("none", 1.0): "undefined", ("hot", float("nan")): "undefined"}
    for (kind, c), word in cases.items():
        assert lesion_verdict(kind, c) == word, (kind, c)
    assert lesion_verdict("hot", 0.6, partial=0.7) == "partly erased"
    with pytest.raises(ValueError, match="kind"):
        lesion_verdict("warm", 1.0)
    with pytest.raises(ValueError, match="thresholds"):
        lesion_verdict("hot", 1.0, partial=1.2)


def test_lesion_report_bad_input_is_named():
    labels, ref = _two_lesions()
    bg = labels == 0
    with pytest.raises(ValueError, match="image has shape"):
        lesion_report(ref[0], ref, labels, bg)
    with pytest.raises(ValueError, match="lesion_labels has shape"):
        lesion_report(ref, ref, labels[0], bg)
    with pytest.raises(ValueError, match="background has shape"):
        lesion_report(ref, ref, labels, bg[0])
    with pytest.raises(ValueError, match="posterior_std has shape"):
        lesion_report(ref, ref, labels, bg, np.ones((2, 2)))
    with pytest.raises(ValueError, match="image contains NaN"):
        lesion_report(np.where(labels == 1, np.nan, ref), ref, labels, bg)
    with pytest.raises(ValueError, match="reference contains NaN"):
        lesion_report(ref, ref * np.nan, labels, bg)
    with pytest.raises(ValueError, match="posterior_std contains NaN"):
        lesion_report(ref, ref, labels, bg, ref * np.nan)
    with pytest.raises(ValueError, match="posterior_std has negative"):
        lesion_report(ref, ref, labels, bg, -ref)
    with pytest.raises(ValueError, match="lesion_labels has no lesion"):
        lesion_report(ref, ref, np.zeros_like(labels), bg)
    with pytest.raises(ValueError, match="lesion_labels must be an integer label image"):
        lesion_report(ref, ref, labels > 0, bg)
    with pytest.raises(ValueError, match="lesion_labels must hold whole numbers"):
        lesion_report(ref, ref, labels * 0.5, bg)
    with pytest.raises(ValueError, match="lesion_labels must be >= 0"):
        lesion_report(ref, ref, -labels, bg)
    with pytest.raises(ValueError, match="background is empty"):
        lesion_report(ref, ref, labels, np.zeros_like(bg))
    with pytest.raises(ValueError, match="background overlaps lesion 3"):
        lesion_report(ref, ref, labels, bg | (labels == 3))
    # an empty lesion: a background for a label the label image does not have
    with pytest.raises(ValueError, match=r"background has masks for lesions \[1, 2, 3\]"):
        lesion_report(ref, ref, labels, {1: bg, 2: bg, 3: bg})
    with pytest.raises(ValueError, match=r"background\[3\] is empty"):
        lesion_report(ref, ref, labels, {1: bg, 3: np.zeros_like(bg)})
    with pytest.raises(ValueError, match="reference mean over the background of lesion 1"):
        lesion_report(ref, np.where(bg, 0.0, ref), labels, bg)
    with pytest.raises(ValueError, match="region"):
        lesion_backgrounds(labels, np.zeros(labels.shape, bool))
    with pytest.raises(ValueError, match="shell of lesion 1 is empty"):
        lesion_backgrounds(labels, labels == 1)
    with pytest.raises(ValueError, match="width"):
        lesion_backgrounds(labels, bg, width=0)
