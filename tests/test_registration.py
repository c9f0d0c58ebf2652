"""T1 registration (data/registration.py): known transforms recovered, Dice ordering on phantoms,
determinism and input checks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from sirf_diffusion.data.registration import Registration, dice, register_t1  # noqa: E402

VOX = (4.0, 2.0, 2.0)


def _blobs(shift_px: tuple[float, float] = (0.0, 0.0), n: int = 48) -> np.ndarray:
    """A smooth 2D test image ``[1, n, n]``: three Gaussian blobs, moved by ``shift_px``."""
    y, x = np.mgrid[:n, :n].astype(np.float64)
    img = np.zeros((n, n))
    for cy, cx, s, a in ((18, 20, 5.0, 1.0), (30, 28, 4.0, 0.7), (22, 32, 3.0, 0.5)):
        img += a * np.exp(-((y - cy - shift_px[0]) ** 2 + (x - cx - shift_px[1]) ** 2)
                          / (2 * s * s))
    return img[None].astype(np.float32)


def test_none_is_the_identity():
    f, m = _blobs(), _blobs((2, 1))
    r = register_t1(f, m, VOX, kind="none")
    assert r.transform is None
    np.testing.assert_array_equal(r.warp(m), m)
    assert r.metric == pytest.approx(float(np.mean((m - f) ** 2)))


def test_affine_recovers_a_known_translation():
    """moving = fixed moved by (3, -2) pixels: the fitted map sends fixed points 3 and -2 pixels
    (6 and -4 mm) along y and x, and warping the moving image gives back the fixed one."""
    f, m = _blobs(), _blobs((3.0, -2.0))
    r = register_t1(f, m, VOX, kind="affine")
    p = r.transform.TransformPoint((20.0, 20.0))  # SimpleITK points are (x, y) in mm
    assert p[0] - 20.0 == pytest.approx(-4.0, abs=0.15)
    assert p[1] - 20.0 == pytest.approx(6.0, abs=0.15)
    before = float(np.mean((m - f) ** 2))
    assert r.metric < 0.01 * before


@pytest.mark.parametrize("kind", ["bspline", "demons"])
def test_deformable_does_at_least_as_well_as_affine_on_a_local_deformation(kind):
    """One blob moved alone: no affine map explains it, a deformable one does better."""
    f = _blobs()
    y, x = np.mgrid[:48, :48].astype(np.float64)
    m = f.copy()
    m[0] += 0.7 * (np.exp(-((y - 32) ** 2 + (x - 29) ** 2) / 32.0)
                   - np.exp(-((y - 30) ** 2 + (x - 28) ** 2) / 32.0))
    affine = register_t1(f, m, VOX, kind="affine")
    deformable = register_t1(f, m, VOX, kind=kind)
    assert deformable.metric < 0.5 * affine.metric


def test_registration_is_deterministic():
    f, m = _blobs(), _blobs((1.5, 0.5))
    a = register_t1(f, m, VOX, kind="demons")
    b = register_t1(f, m, VOX, kind="demons")
    np.testing.assert_array_equal(a.warp(m), b.warp(m))


def test_nearest_warp_keeps_label_values():
    f, m = _blobs(), _blobs((2.0, 1.0))
    r = register_t1(f, m, VOX, kind="affine")
    labels = (m > 0.3).astype(np.float32) * 3
    assert set(np.unique(r.warp(labels, interpolation="nearest"))) <= {0.0, 3.0}


@pytest.mark.slow
def test_phantom_grey_matter_dice_orders_the_kinds():
    """Two subjects of the phantom family: grey-matter Dice after warping rises from no
    registration to affine to affine + demons (the table of docs/personalised.md)."""
    from sirf_diffusion.data.phantoms import brain_phantom

    kw = dict(dims=2, shape=(1, 64, 64), voxel_size_mm=(4.0625, 4.17252, 4.17252))
    target, moving = brain_phantom(0, **kw), brain_phantom(2, **kw)
    scores = {}
    for kind in ("none", "affine", "demons"):
        r = register_t1(target.t1, moving.t1, target.geometry.voxel_size_mm, kind=kind)
        scores[kind] = dice(r.warp(moving.fractions["gm"]) >= 0.5, target.masks["gm"])
    assert scores["none"] < scores["affine"] < scores["demons"]
    assert scores["demons"] > 0.8


def test_dice():
    a = np.zeros((1, 4, 4), bool)
    b = a.copy()
    assert dice(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:, :2])


@pytest.mark.parametrize("change, match", [
    (dict(kind="rigid"), "registration kind"),
    (dict(voxel_size_mm=(1.0, 1.0)), "voxel_size_mm"),
    (dict(moving=np.zeros((1, 48, 48), np.float32)), "moving T1 image is constant"),
    (dict(moving=np.zeros((1, 40, 48), np.float32)), "one shape"),
    (dict(deformable_iterations=0), "deformable_iterations"),
    (dict(demons_sigma_mm=-1.0), "demons_sigma_mm"),
])
def test_bad_input_is_named(change, match):
    args = dict(fixed=_blobs(), moving=_blobs((1, 1)), voxel_size_mm=VOX, kind="affine")
    args.update(change)
    with pytest.raises(ValueError, match=match):
        register_t1(**args)


def test_warp_refuses_another_grid():
    r = Registration("none", (1, 4, 4), VOX)
    with pytest.raises(ValueError, match="registration is on"):
        r.warp(np.zeros((1, 5, 5)))
