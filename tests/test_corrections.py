"""Normalisation, randoms, scatter and Poisson noise against brute-force / analytic oracles."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from sirf_diffusion.physics.corrections import (
    bin_lors,
    detector_pair_for_view_tangential,
    fan_sums,
    normalisation_from_efficiencies,
    num_lors_per_bin,
    random_crystal_efficiencies,
    randoms_from_singles,
    ring_pairs_for_segment,
    scatter_like,
    singles_from_fan_sums,
    uniform_randoms,
)
from sirf_diffusion.physics.geometry import Scanner, SinogramGeometry, get_scanner
from sirf_diffusion.physics.noise import noisy_realisation, poisson_noise, scale_to_counts

TINY = Scanner(
    "Tiny",
    num_rings=5,
    num_detectors_per_ring=16,
    inner_ring_radius_mm=40.0,
    average_depth_of_interaction_mm=0.0,
    ring_spacing_mm=4.0,
    default_bin_size_mm=7.0,
    max_num_non_arccorrected_bins=15,
    default_num_arccorrected_bins=15,
)


def _brute_force_lors(geom: SinogramGeometry):
    """LORs of every bin from the README / STIR formulas, in plain Python (independent oracle)."""
    N = geom.scanner.num_detectors_per_ring
    nr = geom.scanner.num_rings
    k = geom.view_mashing_factor
    out = {}
    for seg in geom.segments:
        off = geom.sinogram_offset(seg.number)
        dabs = (
            0
            if seg.min_ring_difference <= 0 <= seg.max_ring_difference
            else min(abs(seg.min_ring_difference), abs(seg.max_ring_difference))
        )
        for a in range(seg.num_axial_positions):
            ring_sum = 2 * a + abs(seg.number) if geom.span == 1 else a + dabs
            rings = [
                (r1, r2)
                for r1 in range(nr)
                for r2 in range(nr)
                if seg.min_ring_difference <= r2 - r1 <= seg.max_ring_difference
                and r1 + r2 == ring_sum
            ]
            for v in range(geom.num_views):
                for it, t in enumerate(geom.tangential_indices()):
                    t = int(t)
                    lors = []
                    if -N // 2 < t < N // 2:
                        for j in range(k):
                            u = v * k + j
                            d1 = (u + (t >> 1)) % N
                            d2 = (u - ((t + 1) >> 1) + N // 2) % N
                            lors += [(r1, d1, r2, d2) for r1, r2 in rings]
                    out[(off + a, v, it)] = lors
    return out


GEOMS = {
    "2d": SinogramGeometry(TINY.with_rings(1), 8, arc_corrected=False),
    "span1": SinogramGeometry(TINY, 8, arc_corrected=False, span=1, max_ring_difference=2),
    "span3_mash2": SinogramGeometry(TINY, 4, arc_corrected=False, span=3, max_ring_difference=4),
    "span3_mrd3": SinogramGeometry(
        TINY, 8, num_tangential=12, arc_corrected=False, span=3, max_ring_difference=3
    ),
}


# --------------------------------------------------------------------------- detector pairs
def test_detector_pairs_are_a_bijection_on_unordered_pairs():
    """N/2 views x tangential -N/2+1..N/2-1 list every pair of distinct crystals exactly once."""
    N = 16
    v = torch.arange(N // 2)[:, None]
    t = torch.arange(-N // 2 + 1, N // 2)[None, :]
    d1, d2 = detector_pair_for_view_tangential(v, t, N)
    assert (d1 != d2).all()
    pairs = {tuple(sorted(p)) for p in zip(d1.flatten().tolist(), d2.flatten().tolist())}
    assert len(pairs) == d1.numel() == N * (N - 1) // 2
    # t = N/2 is degenerate (STIR allows it, but d1 == d2)
    e1, e2 = detector_pair_for_view_tangential(v, torch.tensor([[N // 2]]), N)
    assert (e1 == e2).all()


def test_mmr_native_sinogram_has_each_pair_at_most_once():
    geom = SinogramGeometry.two_d("mMR", arc_corrected=False)
    rows = bin_lors(geom)
    assert rows.shape[0] == geom.num_views * geom.num_tangential  # every bin is one LOR
    d1, d2 = rows[:, 4], rows[:, 6]
    assert (d1 != d2).all()
    key = torch.minimum(d1, d2) * 504 + torch.maximum(d1, d2)
    assert key.unique().numel() == key.numel()


@pytest.mark.parametrize("t", [-172, -101, -50, -7, -2, -1, 0, 1, 2, 3, 60, 171])
def test_detector_pair_geometry_matches_phi_and_s(t):
    """Crystal d sits at azimuth 2 pi d / N from -y: (R sin psi, -R cos psi).  d1 is end point P1.

    For even t the chord through the two crystals is exactly the LOR (phi(v), s(t)) of the
    non-arc-corrected geometry, P1 = s n - sqrt(R^2 - s^2) d; for odd t STIR's interleaving puts it
    half a crystal angle (pi / N) off phi(v), at the same s.
    """
    geom = SinogramGeometry.two_d("mMR", arc_corrected=False)
    N, R = 504, geom.scanner.effective_ring_radius_mm
    views = torch.arange(0, 252, 17)
    d1, d2 = detector_pair_for_view_tangential(views, torch.tensor(t), N)
    psi1, psi2 = 2 * math.pi * d1.double() / N, 2 * math.pi * d2.double() / N
    p1 = torch.stack([R * torch.sin(psi1), -R * torch.cos(psi1)], -1)
    p2 = torch.stack([R * torch.sin(psi2), -R * torch.cos(psi2)], -1)
    phi = torch.as_tensor(geom.phi()[views.numpy()])
    s = float(geom.s()[t + 172])
    if t % 2 == 0:
        n = torch.stack([torch.cos(phi), torch.sin(phi)], -1)
        d = torch.stack([-torch.sin(phi), torch.cos(phi)], -1)
        h = math.sqrt(R * R - s * s)
        torch.testing.assert_close(p1, s * n - h * d, atol=1e-9, rtol=0)
        torch.testing.assert_close(p2, s * n + h * d, atol=1e-9, rtol=0)
    else:
        u = p2 - p1
        phi_lor = torch.atan2(-u[:, 0], u[:, 1])  # direction d = (-sin phi, cos phi)
        dphi = torch.remainder(phi_lor - phi + math.pi, 2 * math.pi) - math.pi
        torch.testing.assert_close(
            dphi.abs(), torch.full_like(dphi, math.pi / N), atol=1e-9, rtol=0
        )
        n = torch.stack([torch.cos(phi_lor), torch.sin(phi_lor)], -1)
        torch.testing.assert_close((n * p1).sum(-1), torch.full_like(dphi, s), atol=1e-9, rtol=0)


def test_ring_pairs_follow_readme_formulas(stir_reference):
    """README 1.2: span 1 (a, a+d) / (a+|d|, a); span 3 MRD 4: r1+r2 = a (seg 0), a+2 (seg +-1)."""
    sc = get_scanner("mMR").with_rings(8)
    g1 = SinogramGeometry(sc, 252, arc_corrected=True, span=1, max_ring_difference=2)
    for seg in g1.segments:
        ((d, r1, r2, valid),) = ring_pairs_for_segment(g1, seg.number)
        a = torch.arange(seg.num_axial_positions)
        assert valid.all()
        assert torch.equal(r1, a + max(0, -d)) and torch.equal(r2, a + max(0, d))
    g3 = SinogramGeometry(sc, 126, arc_corrected=True, span=3, max_ring_difference=4)
    for seg in g3.segments:
        a = torch.arange(seg.num_axial_positions)
        offset = 0 if seg.number == 0 else 2
        for d, r1, r2, valid in ring_pairs_for_segment(g3, seg.number):
            assert torch.equal((r1 + r2)[valid], (a + offset)[valid])
            assert ((r2 - r1)[valid] == d).all()
            # every admissible pair is listed
            e1, e2 = (a + offset - d) // 2, (a + offset + d) // 2
            expect = ((a + offset - d) % 2 == 0) & (e1 >= 0) & (e1 < 8) & (e2 >= 0) & (e2 < 8)
            assert torch.equal(valid, expect)


@pytest.mark.parametrize("name", sorted(GEOMS))
def test_bin_lors_match_brute_force(name):
    geom = GEOMS[name]
    expected = _brute_force_lors(geom)
    rows = bin_lors(geom).tolist()
    got: dict = {}
    for s, v, t, r1, d1, r2, d2 in rows:
        got.setdefault((s, v, t), []).append((r1, d1, r2, d2))
    for key, lors in expected.items():
        assert sorted(got.get(key, [])) == sorted(lors), key
    counts = num_lors_per_bin(geom, dtype=torch.float64)
    for (s, v, t), lors in expected.items():
        assert counts[s, v, t] == len(lors)


def test_compressed_bins_partition_the_lors():
    """Span 3 + mashing 2 merges exactly the LORs of span 1 unmashed, each once."""
    g_c = GEOMS["span3_mash2"]
    g_1 = SinogramGeometry(TINY, 8, arc_corrected=False, span=1, max_ring_difference=4)

    def lor_set(rows):
        return Counter(map(tuple, rows[:, 3:].tolist()))

    c, u = lor_set(bin_lors(g_c)), lor_set(bin_lors(g_1))
    assert c == u and max(c.values()) == 1
    # no LOR appears reversed in another bin either
    canon = Counter(tuple(sorted([(r1, d1), (r2, d2)])) for r1, d1, r2, d2 in c)
    assert max(canon.values()) == 1


# --------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("name", sorted(GEOMS))
def test_normalisation_is_mean_efficiency_product(name):
    geom = GEOMS[name]
    eff = random_crystal_efficiencies(
        geom.scanner, generator=torch.Generator().manual_seed(3), spread=0.2, dtype=torch.float64
    )
    norm = normalisation_from_efficiencies(eff, geom)
    total = normalisation_from_efficiencies(eff, geom, reduction="sum")
    e = eff.numpy()
    for (s, v, t), lors in _brute_force_lors(geom).items():
        prods = [e[r1, d1] * e[r2, d2] for r1, d1, r2, d2 in lors]
        assert float(total[s, v, t]) == pytest.approx(sum(prods), rel=1e-12, abs=0)
        assert float(norm[s, v, t]) == pytest.approx(
            np.mean(prods) if prods else 0.0, rel=1e-12, abs=0
        )
    assert norm.dtype == torch.float64


def test_normalisation_of_unit_efficiencies_and_arc_corrected_edges():
    geom = SinogramGeometry(
        get_scanner("mMR").with_rings(2), 126, arc_corrected=True, span=1, max_ring_difference=1
    )
    norm = normalisation_from_efficiencies(torch.ones(2, 504), geom)
    outside = torch.as_tensor(np.abs(geom.s()) >= geom.scanner.effective_ring_radius_mm)
    assert outside.any()
    assert (norm[:, :, outside] == 0).all() and (norm[:, :, ~outside] == 1).all()
    # a single cold crystal (0.5): a mashed bin averages two LORs, at most one of which
    # contains that crystal, so affected bins drop to (0.5 + 1) / 2
    eff = torch.ones(2, 504)
    eff[0, 10] = 0.5
    n2 = normalisation_from_efficiencies(eff, geom)
    affected = (n2 < 1) & (n2 > 0)
    assert affected.sum() > 0 and n2.max() == 1
    assert torch.equal(n2[affected], torch.full_like(n2[affected], 0.75))


def test_efficiency_generator_statistics_and_reproducibility():
    sc = get_scanner("mMR")
    e1 = random_crystal_efficiencies(sc, generator=torch.Generator().manual_seed(7), spread=0.1)
    e2 = random_crystal_efficiencies(sc, generator=torch.Generator().manual_seed(7), spread=0.1)
    e3 = random_crystal_efficiencies(sc, generator=torch.Generator().manual_seed(8), spread=0.1)
    assert e1.shape == (64, 504) and torch.equal(e1, e2) and not torch.equal(e1, e3)
    assert (e1 > 0).all()
    # log-normal: mean 1, relative std sqrt(exp(s^2) - 1); 32256 samples -> ~0.1 % error on the mean
    assert float(e1.double().mean()) == pytest.approx(1.0, abs=3e-3)
    assert float(e1.double().std()) == pytest.approx(math.sqrt(math.exp(0.01) - 1), rel=0.03)


# --------------------------------------------------------------------------- randoms
def test_randoms_from_singles_brute_force_and_uniform():
    geom = GEOMS["span3_mash2"]
    g = torch.Generator().manual_seed(0)
    singles = 1e5 * (
        1
        + torch.rand(TINY.num_rings, TINY.num_detectors_per_ring, generator=g, dtype=torch.float64)
    )
    tau, T = 2e-9, 60.0
    r = randoms_from_singles(singles, geom, tau_s=tau, duration_s=T)
    s = singles.numpy()
    for (b, v, t), lors in _brute_force_lors(geom).items():
        expect = sum(2 * tau * T * s[r1, d1] * s[r2, d2] for r1, d1, r2, d2 in lors)
        assert float(r[b, v, t]) == pytest.approx(expect, rel=1e-12, abs=0)
    # uniform singles give randoms proportional to the number of LORs in the bin
    flat = randoms_from_singles(torch.full_like(singles, 1e5), geom, tau_s=tau, duration_s=T)
    torch.testing.assert_close(
        flat, 2 * tau * T * 1e10 * num_lors_per_bin(geom, dtype=torch.float64)
    )
    u = uniform_randoms(geom, 1234.0)
    assert u.shape == geom.shape and (u == u[0, 0, 0]).all()
    assert float(u[0, 0, 0]) * u.numel() == pytest.approx(1234.0, rel=1e-6)


def test_singles_recovered_from_fan_sums():
    geom = SinogramGeometry(TINY, 8, arc_corrected=False, span=1, max_ring_difference=4)
    g = torch.Generator().manual_seed(1)
    singles = 5e4 * (0.5 + torch.rand(TINY.num_rings, 16, generator=g, dtype=torch.float64))
    tau = 3e-9
    randoms = randoms_from_singles(singles, geom, tau_s=tau)
    fans = fan_sums(randoms, geom)
    # fan sum of crystal i = 2 tau s_i sum over its fan of s_j, and sum of fans = 2 x sum of bins
    assert float(fans.sum()) == pytest.approx(2 * float(randoms.sum()), rel=1e-12)
    est = singles_from_fan_sums(fans, geom, tau_s=tau, num_iterations=200)
    torch.testing.assert_close(est, singles, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        randoms_from_singles(est, geom, tau_s=tau), randoms, rtol=1e-6, atol=0
    )


# --------------------------------------------------------------------------- scatter
def _disk_sinogram(geom: SinogramGeometry, radius: float, dtype=torch.float64) -> torch.Tensor:
    s = torch.as_tensor(geom.s(), dtype=dtype)
    chord = 2 * torch.sqrt(torch.clamp(radius**2 - s**2, min=0))
    return chord.expand(geom.shape).clone()


def test_scatter_like_fraction_smoothness_and_dtype():
    geom = SinogramGeometry(
        get_scanner("mMR").with_rings(4), 63, arc_corrected=True, span=1, max_ring_difference=1
    )
    trues = _disk_sinogram(geom, 80.0)
    trues[:, :, 150:160] *= 3  # a hot stripe: high-frequency content scatter must not copy
    sc = scatter_like(trues, geom, scatter_fraction=0.35)
    assert sc.dtype == torch.float64 and sc.shape == trues.shape and (sc >= 0).all()
    assert float(sc.sum() / (sc.sum() + trues.sum())) == pytest.approx(0.35, rel=1e-12)
    # extends beyond the object, and is much smoother along s than the trues
    outside = torch.as_tensor(np.abs(geom.s()) > 120)
    assert float(sc[..., outside].sum()) > 0 and float(trues[..., outside].sum()) == 0

    def roughness(y):
        return float((y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]).abs().sum() / y.abs().sum())

    assert roughness(sc) < 0.01 * roughness(trues)
    # float32 in -> float32 out
    assert scatter_like(trues.float(), geom, scatter_fraction=0.2).dtype == torch.float32


def test_scatter_like_in_blocks_equals_one_pass(monkeypatch):
    """The blurs run in blocks of sinograms and of views to bound memory at clinical sizes;
    since each blur acts along one axis, any block size gives the same sinogram."""
    import sirf_diffusion.physics.corrections as corrections

    geom = SinogramGeometry(get_scanner("mMR").with_rings(6), 42, arc_corrected=False, span=3,
                            max_ring_difference=5)
    g = torch.Generator().manual_seed(0)
    trues = torch.rand(geom.shape, generator=g, dtype=torch.float64) * _disk_sinogram(geom, 90.0)
    whole = scatter_like(trues, geom, scatter_fraction=0.3)  # one block at this size
    for elements in (1, 5 * geom.shape[2] + 7):  # one row/view per block; ragged blocks
        monkeypatch.setattr(corrections, "_BLOCK_ELEMENTS", elements)
        blocks = scatter_like(trues, geom, scatter_fraction=0.3)
        torch.testing.assert_close(blocks, whole, rtol=1e-12, atol=0)


def test_scatter_like_view_wraparound_is_consistent():
    """phi + pi is phi with s -> -s: smoothing over views must not create a seam at view 0."""
    geom = SinogramGeometry.two_d("mMR", num_views=63, arc_corrected=True)
    s = torch.as_tensor(geom.s())
    phi = torch.as_tensor(geom.phi())
    # off-centre point source: sinusoid s = x0 cos phi + y0 sin phi, as a narrow Gaussian
    trues = torch.exp(
        -0.5 * ((s[None, :] - (60 * torch.cos(phi) + 20 * torch.sin(phi))[:, None]) / 5) ** 2
    )[None]
    sc = scatter_like(trues, geom, scatter_fraction=0.5, view_sigma_deg=15.0)
    jump_seam = float((sc[0, 0] - sc[0, -1].flip(0).roll(1)).abs().max())
    jump_inside = float((sc[0, 1:] - sc[0, :-1]).abs().max())
    assert jump_seam < 2 * jump_inside


# --------------------------------------------------------------------------- noise
def test_poisson_noise_mean_variance_and_reproducibility():
    ybar = torch.linspace(0.5, 20.0, 40, dtype=torch.float64).repeat(5000, 1)
    y1 = poisson_noise(ybar, torch.Generator().manual_seed(11))
    y2 = poisson_noise(ybar, torch.Generator().manual_seed(11))
    y3 = poisson_noise(ybar, torch.Generator().manual_seed(12))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert y1.dtype == torch.float64 and torch.equal(y1, y1.round()) and (y1 >= 0).all()
    mean, var = y1.mean(0), y1.var(0)
    lam = ybar[0]
    # 5000 samples: standard error of the mean sqrt(lam/5000), of the variance ~ lam*sqrt(2/5000)
    assert ((mean - lam).abs() < 5 * torch.sqrt(lam / 5000)).all()
    assert ((var - lam).abs() < 5 * lam * math.sqrt(2 / 5000) + 0.05).all()
    assert torch.equal(poisson_noise(torch.zeros(3), torch.Generator()), torch.zeros(3))


def test_scale_to_counts_and_noisy_realisation():
    ybar = torch.rand(4, 6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scaled, f = scale_to_counts(ybar, 1e6)
    assert float(scaled.sum()) == pytest.approx(1e6, rel=1e-12)
    torch.testing.assert_close(scaled, ybar * f)
    y, f2 = noisy_realisation(ybar, 1e6, torch.Generator().manual_seed(5))
    assert f2 == f
    assert abs(float(y.sum()) - 1e6) < 5 * math.sqrt(1e6)


def test_noise_rejects_bad_input():
    g = torch.Generator()
    with pytest.raises(ValueError, match="negative"):
        poisson_noise(torch.tensor([1.0, -1.0]), g)
    with pytest.raises(ValueError, match="NaN"):
        poisson_noise(torch.tensor([float("nan")]), g)
    with pytest.raises(TypeError, match="Generator"):
        poisson_noise(torch.tensor([1.0]), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sums to 0"):
        scale_to_counts(torch.zeros(3), 10.0)
    with pytest.raises(ValueError, match="total_counts"):
        scale_to_counts(torch.ones(3), -1.0)


def test_corrections_reject_bad_input():
    geom = GEOMS["2d"]
    with pytest.raises(ValueError, match="shape"):
        normalisation_from_efficiencies(torch.ones(2, 16), geom)
    with pytest.raises(ValueError, match=">= 0"):
        normalisation_from_efficiencies(-torch.ones(1, 16), geom)
    with pytest.raises(ValueError, match="NaN"):
        randoms_from_singles(torch.full((1, 16), float("nan")), geom, tau_s=1e-9)
    with pytest.raises(ValueError, match="scatter_fraction"):
        scatter_like(torch.ones(geom.shape), geom, scatter_fraction=1.0)
    with pytest.raises(ValueError, match="shape"):
        fan_sums(torch.ones(1, 2, 3), geom)
    with pytest.raises(ValueError, match="tangential positions"):
        detector_pair_for_view_tangential(torch.tensor(0), torch.tensor(-8), 16)
