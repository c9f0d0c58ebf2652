"""PerpendicularPrior3D against explicit per-slice loops with exact Gaussian slice denoisers."""

import numpy as np
import pytest
import torch

from sirf_diffusion.diffusion.prior3d import PerpendicularPrior3D, from_slices, to_slices

F64 = torch.float64
Z, Y, X = 4, 6, 5


class GaussianSliceDenoiser:
    """Exact Tweedie estimate for slices x0 ~ N(mu, C) with a dense covariance C over the
    h*w pixels: D(x, s) = mu + C (C + s^2 I)^{-1} (x - mu).  Counts its calls and batch sizes."""

    def __init__(self, h, w, seed):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(h * w, h * w, generator=g, dtype=F64)
        self.C = a @ a.T / (h * w) + 0.1 * torch.eye(h * w, dtype=F64)
        self.mu = torch.randn(h * w, generator=g, dtype=F64)
        self.h, self.w = h, w
        self.batches = []

    def __call__(self, x, sigma):
        assert x.shape[1:] == (1, self.h, self.w), x.shape
        assert sigma.shape == (x.shape[0],)
        self.batches.append(x.shape[0])
        r = (x.reshape(x.shape[0], -1) - self.mu).unsqueeze(-1)
        A = self.C + sigma.reshape(-1, 1, 1) ** 2 * torch.eye(self.h * self.w, dtype=F64)
        return (self.mu + (self.C @ torch.linalg.solve(A, r)).squeeze(-1)).reshape(x.shape)


def _models():
    return {"xy": GaussianSliceDenoiser(Y, X, 1), "yz": GaussianSliceDenoiser(Z, Y, 2),
            "xz": GaussianSliceDenoiser(Z, X, 3)}


def _loop_oracle(models, x, sigma):
    """Explicit slicing: vol[z] for xy, vol[:, :, i] for yz, vol[:, j, :] for xz."""
    out = {o: torch.zeros_like(x) for o in models}
    for b in range(x.shape[0]):
        s = sigma[b:b + 1]
        v = x[b, 0]
        for z in range(Z):
            out["xy"][b, 0, z] = models["xy"](v[z][None, None], s)[0, 0]
        for i in range(X):
            out["yz"][b, 0, :, :, i] = models["yz"](v[:, :, i][None, None], s)[0, 0]
        for j in range(Y):
            out["xz"][b, 0, :, j, :] = models["xz"](v[:, j, :][None, None], s)[0, 0]
    return out


@pytest.fixture
def volume():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, Z, Y, X, generator=g, dtype=F64), torch.tensor([0.3, 2.0], dtype=F64)


def test_average_of_explicit_slice_denoisers(volume):
    x, sigma = volume
    models = _models()
    oracle = _loop_oracle(models, x, sigma)
    prior = PerpendicularPrior3D(models, chunk_size=4)
    got = prior(x, sigma)
    expected = (oracle["xy"] + oracle["yz"] + oracle["xz"]) / 3
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    for o in models:  # each orientation alone
        assert torch.allclose(prior.denoise_orientation(o, x, sigma), oracle[o], atol=1e-12)
    # the orientations really differ, so the average is not trivially one of them
    assert (oracle["xy"] - oracle["yz"]).abs().max() > 1e-2


def test_subset_of_orientations(volume):
    x, sigma = volume
    models = _models()
    oracle = _loop_oracle(models, x, sigma)
    two = PerpendicularPrior3D({"xy": models["xy"], "xz": models["xz"]})
    assert torch.allclose(two(x, sigma), (oracle["xy"] + oracle["xz"]) / 2, atol=1e-12)
    one = PerpendicularPrior3D({"yz": models["yz"]})
    assert torch.allclose(one(x, sigma), oracle["yz"], atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunking_does_not_change_result_and_bounds_batches(volume, chunk):
    x, sigma = volume
    ref = PerpendicularPrior3D(_models(), chunk_size=10_000)(x, sigma)
    models = _models()
    got = PerpendicularPrior3D(models, chunk_size=chunk)(x, sigma)
    assert torch.allclose(got, ref, rtol=1e-13, atol=1e-13)
    for o, n in (("xy", Z), ("yz", X), ("xz", Y)):
        assert max(models[o].batches) <= chunk
        assert sum(models[o].batches) == x.shape[0] * n


def test_scalar_sigma_and_autograd(volume):
    x, _ = volume
    prior = PerpendicularPrior3D(_models(), chunk_size=3)
    s = torch.tensor(0.7, dtype=F64)
    assert torch.allclose(prior(x, s), prior(x, s.expand(2)))
    xr = x.clone().requires_grad_(True)
    prior(xr, s).sum().backward()  # DPS differentiates through the prior
    assert xr.grad is not None and torch.isfinite(xr.grad).all()


def test_slicing_convention_matches_numpy_indexing():
    v = torch.arange(Z * Y * X, dtype=F64).reshape(Z, Y, X)
    vn = v.numpy()
    assert np.array_equal(to_slices(v, "xy")[:, 0].numpy(), vn)
    sagittal = np.stack([vn[:, :, i] for i in range(X)])
    coronal = np.stack([vn[:, j, :] for j in range(Y)])
    assert np.array_equal(to_slices(v, "yz")[:, 0].numpy(), sagittal)
    assert np.array_equal(to_slices(v, "xz")[:, 0].numpy(), coronal)
    vb = torch.randn(3, 1, Z, Y, X)
    for o in ("xy", "yz", "xz"):
        assert torch.equal(from_slices(to_slices(vb, o), o, batch=3), vb)


def test_bad_inputs_refused():
    with pytest.raises(ValueError, match="at least one"):
        PerpendicularPrior3D({})
    with pytest.raises(ValueError, match="unknown orientation"):
        PerpendicularPrior3D({"zx": lambda x, s: x})
    with pytest.raises(ValueError, match="chunk_size"):
        PerpendicularPrior3D({"xy": lambda x, s: x}, chunk_size=0)
    with pytest.raises(ValueError, match=r"\[B, 1, Z, Y, X\]"):
        PerpendicularPrior3D({"xy": lambda x, s: x})(torch.zeros(1, 4, 4, 4), 1.0)


def test_gradient_recomputes_chunks_and_matches_one_chunk(volume):
    """With a gradient recorded (DPS) each chunk is recomputed in the backward pass, in chunks
    of at most ``chunk_size`` (activations are not kept), and the gradient is unchanged."""
    x, sigma = volume
    xr = x.clone().requires_grad_(True)
    (PerpendicularPrior3D(_models(), chunk_size=10_000)(xr, sigma) ** 2).sum().backward()
    models = _models()
    xc = x.clone().requires_grad_(True)
    out = PerpendicularPrior3D(models, chunk_size=3)(xc, sigma)
    forward = {o: list(m.batches) for o, m in models.items()}
    (out ** 2).sum().backward()
    assert torch.allclose(xc.grad, xr.grad, rtol=1e-12, atol=1e-12)
    for o, m in models.items():
        recomputed = m.batches[len(forward[o]):]
        assert sorted(recomputed) == sorted(forward[o]) and max(recomputed) <= 3
