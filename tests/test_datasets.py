"""Slice datasets: splits, caching, orientations, PSF, normalisation, deterministic batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sirf_diffusion.diffusion.datasets import (
    SliceDataset,
    build_volume_pool,
    derive_seed,
    extract_slices,
    split_seeds,
)
from sirf_diffusion.diffusion.normalisation import support_mean


def blob_volume(seed: int, shape: tuple[int, int, int] = (8, 16, 16)) -> np.ndarray:
    """An asymmetric ellipsoid (so flips are visible) with seed-dependent size and activity."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    rz, ry, rx = shape[0] / 3, shape[1] * rng.uniform(0.25, 0.4), shape[2] * rng.uniform(0.25, 0.4)
    vol = ((z / rz) ** 2 + (y / ry) ** 2 + ((x - 1.5) / rx) ** 2 <= 1).astype(np.float32)
    vol *= rng.uniform(2.0, 8.0) * (1 + 0.5 * (x > 0))
    return vol


def make_dataset(orientation: str = "xy", n: int = 4, seed: int = 3, **kw) -> SliceDataset:
    vols = np.stack([blob_volume(s) for s in range(n)])
    return SliceDataset(vols, orientation=orientation, voxel_size_mm=(2.0, 2.0, 2.0), seed=seed,
                        **kw)


# ------------------------------------------------------------------------------------ splits
def test_split_seeds_are_from_the_requested_split_only():
    from sirf_diffusion.data.splits import subject_seeds, subject_split

    train, val = split_seeds("train", 12), split_seeds("val", 5)
    assert train == [int(s) for s in subject_seeds("train", 12)]
    assert all(subject_split(s) == "train" for s in train)
    assert all(subject_split(s) == "val" for s in val)
    assert not set(train) & set(val)
    with pytest.raises(ValueError, match="positive"):
        split_seeds("train", 0)


# ------------------------------------------------------------------------------------ cache
def test_volume_pool_is_cached_and_regenerated_when_stale(tmp_path):
    calls: list[int] = []

    def source(seed: int) -> np.ndarray:
        calls.append(seed)
        return blob_volume(seed)

    path = tmp_path / "pool.npz"
    a = build_volume_pool([5, 7], source, cache_path=path, meta={"v": 1}, progress=False)
    assert calls == [5, 7] and path.is_file()
    b = build_volume_pool([5, 7], source, cache_path=path, meta={"v": 1}, progress=False)
    assert calls == [5, 7], "the cached pool must be loaded, not regenerated"
    np.testing.assert_array_equal(a.volumes, b.volumes)
    assert b.seeds.tolist() == [5, 7]
    build_volume_pool([5, 7], source, cache_path=path, meta={"v": 2}, progress=False)
    assert calls == [5, 7, 5, 7], "a cache made with other settings must be regenerated"
    build_volume_pool([5, 8], source, cache_path=path, meta={"v": 2}, progress=False)
    assert calls[-2:] == [5, 8]
    path.write_bytes(path.read_bytes()[:100])  # truncated cache
    with pytest.warns(UserWarning, match="unreadable"):
        c = build_volume_pool([5, 8], source, cache_path=path, meta={"v": 2}, progress=False)
    assert c.volumes.shape == (2, 8, 16, 16)


def test_volume_pool_rejects_bad_volumes():
    with pytest.raises(ValueError, match="z, y, x"):
        build_volume_pool([1], lambda s: np.ones((4, 4)), progress=False)
    with pytest.raises(ValueError, match="negative"):
        build_volume_pool([1], lambda s: -np.ones((2, 4, 4)), progress=False)


# ------------------------------------------------------------------------------ orientations
@pytest.mark.parametrize("orientation, expect", [("xy", lambda v: v[3]),
                                                 ("yz", lambda v: v[:, :, 4]),
                                                 ("xz", lambda v: v[:, 5, :])])
def test_extract_slices_orientations(orientation, expect):
    vol = np.random.default_rng(0).random((6, 10, 14)).astype(np.float32)
    sl = extract_slices(vol, orientation)
    k = {"xy": 3, "yz": 4, "xz": 5}[orientation]
    np.testing.assert_array_equal(sl[k], expect(vol))
    shape = {"xy": (10, 14), "yz": (6, 10), "xz": (6, 14)}[orientation]
    assert sl.shape[1:] == shape
    with pytest.raises(ValueError, match="orientation"):
        extract_slices(vol, "zz")


def test_trivial_slices_are_dropped_and_slices_padded():
    vol = np.zeros((1, 10, 12, 12), np.float32)
    vol[0, 3:7, 2:10, 2:10] = 1.0  # object in planes 3..6 only
    ds = SliceDataset(vol, orientation="xy", voxel_size_mm=(2, 2, 2), slice_shape=(16, 16),
                      min_support_fraction=0.05)
    assert ds.index[:, 1].tolist() == [3, 4, 5, 6]
    assert ds.slice_shape == (16, 16)
    assert torch.equal(ds.slices[0, 4:12, 4:12], torch.ones(8, 8))
    with pytest.raises(ValueError, match="non-trivial"):
        SliceDataset(np.zeros((1, 4, 8, 8), np.float32), orientation="xy", voxel_size_mm=(2, 2, 2))


def test_psf_blur_has_the_requested_fwhm():
    vol = np.zeros((1, 31, 31, 31), np.float32)
    vol[0, 15, 15, 15] = 1.0
    fwhm, vox = 4.5, 1.5
    ds = SliceDataset(vol, orientation="xy", voxel_size_mm=(vox, vox, vox), psf_fwhm_mm=fwhm,
                      min_support_fraction=0.0 + 1e-6, support_threshold=0.01)
    centre = ds.slices[ds.index[:, 1].tolist().index(15)].double()
    prof = centre.sum(0)
    x = (torch.arange(31, dtype=torch.float64) - 15) * vox
    sigma_mm = math.sqrt(float((prof * x**2).sum() / prof.sum()))
    assert sigma_mm * 2 * math.sqrt(2 * math.log(2)) == pytest.approx(fwhm, rel=0.02)


# --------------------------------------------------------------------- normalisation, augment
@pytest.mark.parametrize("orientation", ["xy", "yz", "xz"])
def test_normalisation_is_recorded_and_invertible(orientation):
    ds = make_dataset(orientation, psf_fwhm_mm=3.0)
    b = ds.batch(2, 16)
    raw = ds.slices[b.indices].clone()
    raw[b.flipped] = torch.flip(raw[b.flipped], dims=(-1,))
    back = b.normalisation.from_prior(b.x)[:, 0]
    torch.testing.assert_close(back, raw, rtol=1e-5, atol=1e-6)
    # x = factor * slice / support_mean: the support mean of x is the augmentation factor
    torch.testing.assert_close(support_mean(b.x.double(), None, ds.support_threshold),
                               b.factor, rtol=1e-5, atol=0)
    lo, hi = ds.scale_range
    assert bool(((b.factor >= lo) & (b.factor <= hi)).all())
    assert b.x.dtype == torch.float32 and b.x.shape == (16, 1, *ds.slice_shape)
    assert ds.describe()["normalisation"]["kind"] == "divide_by_support_mean"


def test_flips_only_left_right_and_never_sagittal():
    b = make_dataset("xy").batch(0, 64)
    assert 0 < int(b.flipped.sum()) < 64
    assert not make_dataset("yz").batch(0, 64).flipped.any()
    assert not make_dataset("xy", flip=False).batch(0, 64).flipped.any()
    c = make_dataset("xy", scale_range=(1.0, 1.0)).batch(0, 8)
    assert torch.equal(c.factor, torch.ones(8, dtype=torch.float64))


# ------------------------------------------------------------------------------ determinism
def test_batches_are_a_pure_function_of_seed_step_rank_world():
    a, b = make_dataset(seed=3), make_dataset(seed=3)
    for step in (0, 5, 17):
        x1, x2 = a.batch(step, 8), b.batch(step, 8)
        assert torch.equal(x1.x, x2.x) and torch.equal(x1.indices, x2.indices)
    # order of calls does not matter (no carried state)
    assert torch.equal(b.batch(5, 8).x, make_dataset(seed=3).batch(5, 8).x)
    assert not torch.equal(a.batch(0, 8).indices, a.batch(1, 8).indices)
    assert not torch.equal(a.batch(0, 8).x, make_dataset(seed=4).batch(0, 8).x)
    # shards of a 2- or 4-process run concatenate to the single-process batch
    full = a.batch(9, 8)
    for world in (2, 4):
        shards = [a.batch(9, 8, rank=r, world_size=world) for r in range(world)]
        assert torch.equal(torch.cat([s.x for s in shards]), full.x)
        assert torch.equal(torch.cat([s.factor for s in shards]), full.factor)
    with pytest.raises(ValueError, match="divisible"):
        a.batch(0, 6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        a.batch(0, 8, rank=2, world_size=2)


def test_each_epoch_visits_every_slice_once():
    ds = make_dataset(n=3)
    m, bsz = len(ds), 5
    seen = torch.cat([ds.global_indices(k, bsz) for k in range(math.ceil(2 * m / bsz))])
    assert sorted(seen[:m].tolist()) == list(range(m))
    assert sorted(seen[m:2 * m].tolist()) == list(range(m))
    assert not torch.equal(seen[:m], seen[m:2 * m])  # a new permutation each epoch


def test_derive_seed():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(0, 1, k) for k in range(100)}) == 100
    assert 0 <= derive_seed(2**40, 7) < 2**63
    with pytest.raises(ValueError):
        derive_seed(-1)


def test_bad_arguments_are_named():
    vols = np.stack([blob_volume(0)])
    with pytest.raises(ValueError, match="orientation"):
        SliceDataset(vols, orientation="ab", voxel_size_mm=(2, 2, 2))
    with pytest.raises(ValueError, match=r"\[N, z, y, x\]"):
        SliceDataset(vols[0], orientation="xy", voxel_size_mm=(2, 2, 2))
    with pytest.raises(ValueError, match="scale_range"):
        SliceDataset(vols, orientation="xy", voxel_size_mm=(2, 2, 2), scale_range=(1.5, 1.0))
