"""DiffusionPrior and the container conversions: closed-form Gaussian oracles, no toolkit needed.

For a Gaussian prior ``x0 ~ N(mu, v)`` (elementwise, normalised space) everything is exact:
the Tweedie denoiser is ``D(x, sigma) = mu + v / (v + sigma^2) (x - mu)``, the smoothed prior is
``N(mu, v + sigma^2)``, so the penalty gradient, the path-integral value, the RED / residual
values and the proximal map all have closed forms in physical units ``u = s x``.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import GaussianDenoiser, poisson_problem, prior_layout

from sirf_diffusion.diffusion.normalisation import IntensityNormalisation, support_mean
from sirf_diffusion.diffusion.prior3d import PerpendicularPrior3D
from sirf_diffusion.integrations import DiffusionPrior, container_kind, like, to_numpy, to_torch
from sirf_diffusion.integrations.prior import gauss_legendre_01
from sirf_diffusion.recon.em import osem
from sirf_diffusion.recon.map import bsrem

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- fakes and oracles
class _Float32Copy:
    """A float32 copy of ``arr`` whose ``as_array`` returns a copy (as SIRF and STIR do)."""

    def __init__(self, arr):
        self._a = np.array(arr, dtype=np.float32)

    def as_array(self):
        return self._a.copy()


class FakeSIRFImage(_Float32Copy):
    """Duck-typed SIRF ``ImageData``: as_array (copy), asarray (view), fill, clone,
    get_uniform_copy."""

    def asarray(self, copy=False):
        return self._a.copy() if copy else self._a

    def fill(self, v):
        if isinstance(v, np.ndarray):
            if v.shape != self._a.shape:
                raise ValueError("shape mismatch")
            self._a[...] = v
        else:
            self._a[...] = float(v)
        return self

    def clone(self):
        return FakeSIRFImage(self._a)

    def get_uniform_copy(self, value=1.0):
        return FakeSIRFImage(np.full_like(self._a, value))

    @property
    def shape(self):
        return self._a.shape


class FakeCILImage:
    """Duck-typed CIL ``ImageData``: as_array returns the buffer itself, fill, clone."""

    def __init__(self, arr, dtype=np.float32):
        self.array = np.array(arr, dtype=dtype)

    def as_array(self):
        return self.array

    def fill(self, v):
        np.copyto(self.array, v)

    def clone(self):
        return FakeCILImage(self.array.copy(), self.array.dtype)

    @property
    def shape(self):
        return self.array.shape


class FakeSTIRImage(_Float32Copy):
    """Duck-typed STIR image (a class of module ``stir``): as_array, fill(iterator),
    get_empty_copy."""

    def fill(self, v):
        if isinstance(v, (int, float)):
            self._a[...] = v
        else:  # STIR's SWIG fill takes an iterator over the values
            vals = np.fromiter(v, dtype=np.float32, count=self._a.size)
            self._a[...] = vals.reshape(self._a.shape)

    def get_empty_copy(self):
        return FakeSTIRImage(np.zeros_like(self._a))


FakeSTIRImage.__module__ = "stir"


def gaussian_case(shape=(1, 4, 5), seed=0, mu_scalar=False):
    g = torch.Generator().manual_seed(seed)
    if mu_scalar:
        mu, var = torch.full(shape, 1.2, dtype=DT), torch.full(shape, 0.3, dtype=DT)
    else:
        mu = 0.5 + torch.rand(shape, generator=g, dtype=DT)
        var = 0.1 + 0.5 * torch.rand(shape, generator=g, dtype=DT)
    u = 3.0 * (0.5 + torch.rand(shape, generator=g, dtype=DT))
    return mu, var, u


def closed_form(u, mu, var, s, sigma, beta):
    """Gradient and exact path value of R(u) = -beta log N(u/s; mu, var + sigma^2) + const."""
    x = u / s
    w = var + sigma**2
    grad = beta * (x - mu) / (w * s)
    value = beta * (0.5 * ((x - mu) ** 2 / w).sum() - 0.5 * (mu**2 / w).sum())
    return grad, value


# ----------------------------------------------------------------------------- containers
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_numpy_round_trip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    t, restore = to_torch(a)
    assert container_kind(a) == "numpy" and t.shape == (2, 3, 4)
    assert t.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    if dtype != np.int32:
        assert np.shares_memory(t.numpy(), a)  # zero-copy view
    back = restore(t * 2)
    assert isinstance(back, np.ndarray) and back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, (2 * a).astype(dtype))
    out = np.zeros_like(a)
    assert restore(t, out=out) is out
    np.testing.assert_array_equal(out, a)


def test_torch_round_trip_keeps_dtype_and_identity_of_values():
    a = torch.rand(2, 3, 4, dtype=DT)
    t, restore = to_torch(a)
    assert t.dtype == DT and torch.equal(t, a)
    t32, restore32 = to_torch(a, dtype=torch.float32)
    assert t32.dtype == torch.float32
    back = restore32(t32)
    assert back.dtype == DT and torch.allclose(back, a, atol=1e-6)
    out = torch.empty_like(a)
    assert restore(t + 1, out=out) is out and torch.equal(out, a + 1)


@pytest.mark.parametrize("cls", [FakeSIRFImage, FakeCILImage, FakeSTIRImage])
def test_image_container_round_trip(cls):
    a = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    img = cls(a)
    kind = container_kind(img)
    assert kind == ("stir" if cls is FakeSTIRImage else "container")
    t, restore = to_torch(img)
    assert t.dtype == torch.float32 and tuple(t.shape) == (3, 4, 5)
    np.testing.assert_array_equal(t.numpy(), a)
    back = restore(t * 3)
    assert type(back) is cls and back is not img
    np.testing.assert_allclose(to_numpy(back), 3 * a, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(img), a)  # the input is untouched
    out = cls(np.zeros_like(a))
    assert restore(t, out=out) is out
    np.testing.assert_array_equal(to_numpy(out), a)
    np.testing.assert_allclose(to_numpy(like(img, np.ones((3, 4, 5)))), 1.0)


def test_sirf_zero_copy_read():
    img = FakeSIRFImage(np.ones((1, 2, 3)))
    t, _ = to_torch(img)
    assert np.shares_memory(t.numpy(), img._a)


def test_container_errors():
    with pytest.raises(TypeError, match="unsupported image type"):
        to_torch([[1.0, 2.0]])
    with pytest.raises(TypeError, match="unsupported image type"):
        container_kind(3.0)
    with pytest.raises(TypeError, match="complex"):
        to_torch(np.ones((2, 2), dtype=np.complex64))
    _, restore = to_torch(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot restore"):
        restore(torch.ones(3, 2))
    with pytest.raises(TypeError, match="out must be a numpy array"):
        restore(torch.ones(2, 3), out=torch.ones(2, 3))
    _, restore_img = to_torch(FakeSIRFImage(np.ones((1, 2, 3))))
    with pytest.raises(TypeError, match="out must be an image"):
        restore_img(torch.ones(1, 2, 3), out=FakeSTIRImage(np.ones((1, 2, 3))))


# ----------------------------------------------------------------------------- gradient / value
@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 4, 5)])
def test_gradient_is_scaled_negative_score_closed_form(shape):
    mu, var, u = gaussian_case(shape)
    s, sigma, beta = 2.5, 0.2, 0.7
    D = GaussianDenoiser(prior_layout(mu), prior_layout(var))
    prior = DiffusionPrior(D, sigma=sigma, penalisation_factor=beta, normalisation=s)
    g = prior.get_gradient(u)
    g_exact, v_exact = closed_form(u, mu, var, s, sigma, beta)
    assert g.dtype == DT and g.shape == u.shape
    torch.testing.assert_close(g, g_exact, rtol=1e-12, atol=1e-12)
    # the chain rule written out: -beta * score(u/s) / s with score = (D - x) / sigma^2
    x = prior_layout(u / s)
    score = (D(x, torch.tensor([sigma], dtype=DT)) - x) / sigma**2
    torch.testing.assert_close(g, (-beta * score / s).reshape(shape), rtol=1e-12, atol=1e-12)
    # path value: exact negative log-density of the smoothed prior (up to its value at 0)
    assert abs(float(prior.get_value(u)) - float(v_exact)) < 1e-10 * max(1, abs(float(v_exact)))


def test_gradient_matches_finite_differences_of_path_value():
    mu, var, u = gaussian_case((1, 3, 4), seed=3)
    prior = DiffusionPrior(GaussianDenoiser(prior_layout(mu), prior_layout(var)), sigma=0.3,
                           penalisation_factor=1.3, normalisation=1.7, num_quadrature=2)
    g = prior.get_gradient(u)
    h = 1e-5
    fd = torch.zeros_like(u)
    for i in range(u.numel()):
        e = torch.zeros(u.numel(), dtype=DT)
        e[i] = h
        e = e.reshape(u.shape)
        fd.view(-1)[i] = (prior.get_value(u + e) - prior.get_value(u - e)) / (2 * h)
    torch.testing.assert_close(fd, g, rtol=1e-7, atol=1e-8)


def test_value_modes_closed_forms():
    mu, var, u = gaussian_case((1, 4, 4), seed=1)
    s, sigma, beta = 2.0, 0.25, 0.9
    D = GaussianDenoiser(prior_layout(mu), prior_layout(var))
    x = u / s
    w = var + sigma**2
    r = sigma**2 / w * (x - mu)  # x - D(x)
    res = DiffusionPrior(D, sigma, beta, normalisation=s, value_mode="residual")
    red = DiffusionPrior(D, sigma, beta, normalisation=s, value_mode="red")
    assert math.isclose(float(res.get_value(u)), beta * 0.5 * float((r**2).sum()) / sigma**2,
                        rel_tol=1e-12)
    assert math.isclose(float(red.get_value(u)), beta * 0.5 * float((x * r).sum()) / sigma**2,
                        rel_tol=1e-12)
    # the residual energy's gradient is NOT get_gradient: sigma^2 / (v + sigma^2) times it here
    g = res.get_gradient(u)
    h = 1e-6
    d = torch.randn(u.shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    fd = (res.get_value(u + h * d) - res.get_value(u - h * d)) / (2 * h)
    expected = float((beta * r / (w * s) * d).sum())  # grad of beta/2 ||r||^2 / sigma^2
    assert math.isclose(float(fd), expected, rel_tol=1e-6)
    assert not math.isclose(float(fd), float((g * d).sum()), rel_tol=1e-3)
    # RED is exact (value and gradient consistent) for a zero-mean Gaussian prior
    D0 = GaussianDenoiser(torch.zeros_like(prior_layout(mu)), prior_layout(var))
    red0 = DiffusionPrior(D0, sigma, beta, normalisation=s, value_mode="red")
    path0 = DiffusionPrior(D0, sigma, beta, normalisation=s, value_mode="path")
    assert math.isclose(float(red0.get_value(u)), float(path0.get_value(u)), rel_tol=1e-12)


def test_path_value_quadrature_and_call_aliases():
    t, w = gauss_legendre_01(3)
    assert math.isclose(float(w.sum()), 1.0) and float(t.min()) > 0 and float(t.max()) < 1
    assert math.isclose(float((w * t**5).sum()), 1 / 6, rel_tol=1e-12)  # degree 2n-1 exact
    mu, var, u = gaussian_case((1, 2, 3))
    D = GaussianDenoiser(prior_layout(mu), prior_layout(var))
    prior = DiffusionPrior(D, 0.2, 1.0, normalisation=1.0, num_quadrature=3)
    D.calls = 0
    v = prior(u)
    assert D.calls == 3  # one denoiser call per node
    assert float(v) == float(prior.value(u)) == float(prior.get_value(u))
    torch.testing.assert_close(prior.gradient(u), prior.get_gradient(u))


def test_same_gradient_for_numpy_torch_and_containers():
    mu, var, u = gaussian_case((2, 3, 4), seed=5)
    D = GaussianDenoiser(prior_layout(mu).float(), prior_layout(var).float())
    prior = DiffusionPrior(D, 0.2, 0.8)
    u32 = u.float()
    prior.set_up(u32.numpy())
    g_t = prior.get_gradient(u32)
    g_np = prior.get_gradient(u32.numpy())
    g_sirf = prior.get_gradient(FakeSIRFImage(u32.numpy()))
    g_cil = prior.get_gradient(FakeCILImage(u32.numpy()))
    g_stir = prior.get_gradient(FakeSTIRImage(u32.numpy()))
    assert isinstance(g_t, torch.Tensor) and isinstance(g_np, np.ndarray)
    assert type(g_sirf) is FakeSIRFImage and type(g_cil) is FakeCILImage
    assert type(g_stir) is FakeSTIRImage
    for g in (g_np, g_sirf, g_cil, g_stir):
        np.testing.assert_array_equal(to_numpy(g), g_t.numpy())
    v_t = prior.get_value(u32)
    assert isinstance(v_t, torch.Tensor) and v_t.ndim == 0
    for img in (u32.numpy(), FakeSIRFImage(u32.numpy()), FakeSTIRImage(u32.numpy())):
        v = prior.get_value(img)
        assert isinstance(v, float) and v == float(v_t)
    # float64 numpy in, float64 out (computed in the input's dtype: no parameters to follow)
    g64 = prior.get_gradient(u.numpy())
    assert g64.dtype == np.float64
    np.testing.assert_allclose(g64, g_t.numpy(), rtol=1e-5, atol=1e-6)


def test_out_argument_fills_and_returns_out():
    mu, var, u = gaussian_case((1, 3, 3))
    prior = DiffusionPrior(GaussianDenoiser(prior_layout(mu), prior_layout(var)), 0.2, 1.0,
                           normalisation=2.0)
    ref = prior.get_gradient(u)
    out = torch.empty_like(u)
    assert prior.get_gradient(u, out=out) is out and torch.equal(out, ref)
    out_np = np.empty(u.shape)
    assert prior.gradient(u.numpy(), out=out_np) is out_np
    np.testing.assert_allclose(out_np, ref.numpy())
    img = FakeSIRFImage(u.numpy())
    out_img = img.get_uniform_copy(0.0)
    assert prior.get_gradient(img, out=out_img) is out_img
    np.testing.assert_allclose(out_img.as_array(), ref.numpy(), rtol=1e-5, atol=1e-6)
    # in place (out is the input) is safe
    v = u.clone()
    prior.get_gradient(v, out=v)
    torch.testing.assert_close(v, ref)


def test_two_dimensional_arrays_and_batches():
    mu, var, u = gaussian_case((1, 4, 5))
    prior = DiffusionPrior(GaussianDenoiser(prior_layout(mu), prior_layout(var)), 0.2, 1.0,
                           normalisation=2.0)
    g = prior.get_gradient(u)
    g2 = prior.get_gradient(u[0].numpy())  # (y, x): one slice
    assert g2.shape == (4, 5)
    np.testing.assert_allclose(g2, g[0].numpy())
    batch = torch.stack([u, 2 * u])  # [B, z, y, x]
    gb = prior.get_gradient(batch)
    vb = prior.get_value(batch)
    assert gb.shape == batch.shape and vb.shape == (2,)
    torch.testing.assert_close(gb[1], prior.get_gradient(2 * u))
    torch.testing.assert_close(vb[1], prior.get_value(2 * u))


def test_perpendicular_prior_3d_volume():
    shape = (3, 4, 5)
    mu, var, u = gaussian_case(shape, mu_scalar=True)
    # an elementwise Gaussian with constant mean/variance: every orientation gives the same
    # Tweedie estimate, so the product of experts is the same Gaussian
    D2 = GaussianDenoiser(1.2, 0.3)
    prior = DiffusionPrior(PerpendicularPrior3D({"xy": D2, "yz": D2, "xz": D2}), 0.3, 0.5)
    prior.set_up(u)
    s = float(support_mean(u))
    assert math.isclose(float(prior.get_normalisation().scale), s, rel_tol=1e-12)
    g_exact, v_exact = closed_form(u, mu, var, s, 0.3, 0.5)
    torch.testing.assert_close(prior.get_gradient(u), g_exact, rtol=1e-12, atol=1e-12)
    assert math.isclose(float(prior.get_value(u)), float(v_exact), rel_tol=1e-10)


def test_proximal_closed_form_and_limits():
    mu, var, u = gaussian_case((1, 3, 4), seed=2)
    s, sigma, beta, tau = 1.5, 0.2, 0.8, 0.6
    prior = DiffusionPrior(GaussianDenoiser(prior_layout(mu), prior_layout(var)), sigma, beta,
                           normalisation=s)
    z = prior.proximal(u, tau)
    y, lam, w = u / s, tau * beta / s**2, var + sigma**2
    z_exact = s * (y * w + lam * mu) / (w + lam)  # argmin 1/2||z-u||^2 + tau R(z)
    torch.testing.assert_close(z, z_exact, rtol=1e-12, atol=1e-12)
    # optimality: z - u + tau * grad R(z) = 0
    torch.testing.assert_close(z - u + tau * prior.get_gradient(z), torch.zeros_like(u),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(prior.proximal(u, 0.0), u)
    out = np.empty(u.shape)
    assert prior.proximal(u.numpy(), tau, out=out) is out
    np.testing.assert_allclose(out, z_exact.numpy())
    d = prior.denoise(u)
    torch.testing.assert_close(d, s * (mu + var / w * (y - mu)))


def test_set_up_fits_scale_and_checks_shapes():
    mu, var, u = gaussian_case((1, 4, 5))
    prior = DiffusionPrior(GaussianDenoiser(prior_layout(mu), prior_layout(var)), 0.2, 1.0)
    assert not prior.is_set_up
    with pytest.raises(RuntimeError, match="set_up"):
        prior.get_gradient(u)
    mask = torch.zeros_like(u)
    mask[0, 1:3, 1:4] = 1
    prior.set_up(FakeSIRFImage(u.numpy()), mask.numpy())
    expected = float((u * mask).sum() / mask.sum())
    assert math.isclose(float(prior.get_normalisation().scale), expected, rel_tol=1e-6)
    assert prior.image_shape == (1, 4, 5)
    with pytest.raises(ValueError, match="set up for"):
        prior.get_gradient(torch.ones(1, 4, 6, dtype=DT))
    with pytest.raises(ValueError, match="mask has shape"):
        prior.set_up(u, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="support"):
        prior.set_up(torch.zeros(1, 4, 5))
    # a given normalisation is kept by set_up unless asked to refit
    fixed = DiffusionPrior(GaussianDenoiser(0.0, 1.0), 0.2, 1.0,
                           normalisation=IntensityNormalisation(7.0))
    fixed.set_up(u)
    assert fixed.get_normalisation().scale == 7.0
    fixed.set_up(u, fit_normalisation=True)
    assert math.isclose(float(fixed.get_normalisation().scale), float(support_mean(u)),
                        rel_tol=1e-9)


def test_penalisation_factor_and_zero_beta():
    mu, var, u = gaussian_case((1, 3, 3))
    prior = DiffusionPrior(GaussianDenoiser(prior_layout(mu), prior_layout(var)), 0.2, 2.0,
                           normalisation=1.0)
    g2 = prior.get_gradient(u)
    prior.set_penalisation_factor(0.5)
    assert prior.get_penalisation_factor() == 0.5
    torch.testing.assert_close(prior.get_gradient(u), g2 / 4)
    prior.set_penalisation_factor(0)
    assert float(prior.get_value(u)) == 0.0
    assert torch.count_nonzero(prior.get_gradient(u)) == 0


def test_bad_inputs():
    D = GaussianDenoiser(1.0, 0.5)
    with pytest.raises(TypeError, match="callable"):
        DiffusionPrior("not a denoiser")
    for kwargs, match in [({"sigma": 0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
                          ({"penalisation_factor": -1}, "penalisation_factor"),
                          ({"value_mode": "exact"}, "value_mode"),
                          ({"num_quadrature": 0}, "num_quadrature"),
                          ({"support_threshold": 1.5}, "support_threshold"),
                          ({"normalisation": -2.0}, "scale")]:
        with pytest.raises(ValueError, match=match):
            DiffusionPrior(D, **kwargs)
    prior = DiffusionPrior(D, 0.2, 1.0, normalisation=1.0)
    with pytest.raises(TypeError, match="image: unsupported image type"):
        prior.get_gradient([[1.0]])
    with pytest.raises(ValueError, match="NaN"):
        prior.get_gradient(torch.tensor([[[float("nan")]]]))
    with pytest.raises(ValueError, match="expected"):
        prior.get_gradient(torch.ones(1, 1, 1, 2, 2))
    with pytest.raises(ValueError, match="expected"):
        prior.get_gradient(torch.ones(4))
    with pytest.raises(TypeError, match="tau"):
        prior.proximal(torch.ones(1, 2, 2), tau=torch.ones(2))
    with pytest.raises(ValueError, match="tau"):
        prior.proximal(torch.ones(1, 2, 2), tau=-1.0)
    bad = DiffusionPrior(lambda x, s: x[..., :1], 0.2, 1.0, normalisation=1.0)
    with pytest.raises(ValueError, match="denoiser returned shape"):
        bad.get_gradient(torch.ones(1, 2, 2))


def test_slice_score_model_refuses_a_volume():
    from sirf_diffusion.diffusion.model import ScoreModel, ScoreModelConfig
    from sirf_diffusion.diffusion.unet import UNetConfig

    model = ScoreModel(ScoreModelConfig(unet=UNetConfig(base_channels=8, channel_mults=(1,),
                                                        num_res_blocks=1,
                                                        attention_resolutions=(),
                                                        groupnorm_groups=4),
                                        image_size=(8, 8))).eval()
    prior = DiffusionPrior(model, 0.2, 1.0)
    with pytest.raises(ValueError, match="PerpendicularPrior3D"):
        prior.set_up(torch.ones(3, 8, 8))
    # a slice image works, in the network's dtype, for float64 input too
    u = torch.rand(1, 8, 8, dtype=DT) + 0.5
    prior.set_up(u)
    g = prior.get_gradient(u)
    assert g.dtype == DT and g.shape == u.shape and bool(torch.isfinite(g).all())
    prior3d = DiffusionPrior(PerpendicularPrior3D({"xy": model}), 0.2, 1.0)
    prior3d.set_up(torch.rand(2, 8, 8) + 0.5)
    assert prior3d.get_gradient(torch.rand(2, 8, 8) + 0.5).shape == (2, 8, 8)


def test_import_does_not_import_toolkits():
    code = ("import sys, sirf_diffusion, sirf_diffusion.integrations as I, "
            "sirf_diffusion.integrations.sirf, sirf_diffusion.samplers.run, stir_wrappers; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('cil', 'sirf', 'stir')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- Hessian
class SmoothDenoiser(torch.nn.Module):
    """A non-linear, non-separable toy denoiser: x - sigma^2 tanh(conv(x)) (float64)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=True).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-0.5, 0.7, 9, dtype=DT).reshape(1, 1, 3, 3))
            self.conv.bias.fill_(-0.3)

    def forward(self, x, sigma):
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1) ** 2
        return x - s2 * torch.tanh(self.conv(x))


@pytest.mark.parametrize("denoiser", ["gaussian", "smooth"])
def test_hessian_times_input_is_the_derivative_of_the_gradient(denoiser):
    """``multiply_with_Hessian(u, v)`` against central finite differences of ``get_gradient``
    along ``v``; for the Gaussian prior also the closed form ``beta v / (s^2 (var + sigma^2))``."""
    mu, var, u = gaussian_case((1, 5, 6), seed=4)
    s, sigma, beta = 1.7, 0.3, 0.9
    D = GaussianDenoiser(prior_layout(mu), prior_layout(var)) if denoiser == "gaussian" \
        else SmoothDenoiser()
    prior = DiffusionPrior(D, sigma, beta, normalisation=s)
    v = torch.randn(u.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    hv = prior.multiply_with_Hessian(u, v)
    assert hv.shape == u.shape and hv.dtype == DT
    h = 1e-5
    fd = (prior.get_gradient(u + h * v) - prior.get_gradient(u - h * v)) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-7, atol=1e-9)
    if denoiser == "gaussian":
        torch.testing.assert_close(hv, beta * v / (s**2 * (var + sigma**2)), rtol=1e-12,
                                   atol=1e-12)
    else:   # non-separable: the product is not elementwise in v (the oracle can fail)
        e = torch.zeros_like(u)
        e[0, 2, 3] = 1.0
        assert int((prior.multiply_with_Hessian(u, e).abs() > 1e-12).sum()) > 1
    # SIRF's out= convention and the accumulating form
    out = torch.zeros_like(u)
    assert prior.multiply_with_Hessian(u, v, out=out) is out and torch.equal(out, hv)
    acc = torch.ones_like(u)
    assert prior.accumulate_Hessian_times_input(u, v, out=acc) is acc
    torch.testing.assert_close(acc, 1 + hv)
    torch.testing.assert_close(prior.accumulate_Hessian_times_input(u, v), hv)
    img = FakeSIRFImage(u.numpy())
    h_img = prior.multiply_with_Hessian(img, FakeSIRFImage(v.numpy()))
    assert type(h_img) is FakeSIRFImage
    np.testing.assert_allclose(h_img.as_array(), hv.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="input has shape"):
        prior.multiply_with_Hessian(u, v[:, :4])
    prior.set_penalisation_factor(0.0)
    assert torch.count_nonzero(prior.multiply_with_Hessian(u, v)) == 0


# ----------------------------------------------------------------------------- MAP with bsrem
def test_bsrem_with_diffusion_prior_reaches_the_gaussian_map():
    scipy_opt = pytest.importorskip("scipy.optimize")
    lik, truth = poisson_problem(density=0.5)
    shape = lik.physics.image_shape
    mu = torch.full(shape, 1.0, dtype=DT)
    var = torch.full(shape, 0.05, dtype=DT)
    sigma, beta = 0.1, 4.0
    prior = DiffusionPrior(GaussianDenoiser(prior_layout(mu), prior_layout(var)), sigma, beta)
    x_osem = osem(lik, num_subsets=2, num_epochs=3, progress=False)
    prior.set_up(x_osem)
    s = float(prior.get_normalisation().scale)

    def neg_phi(v):
        u = torch.tensor(v, dtype=DT).reshape(shape)
        val, grad = lik.value_and_gradient(u)
        g_r, v_r = closed_form(u, mu, var, s, sigma, beta)
        return float(v_r - val), (g_r - grad).reshape(-1).numpy()

    ref = scipy_opt.minimize(neg_phi, x_osem.reshape(-1).numpy(), jac=True, method="L-BFGS-B",
                             bounds=[(0, None)] * x_osem.numel(),
                             options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    x_map = torch.tensor(ref.x, dtype=DT).reshape(shape)
    x, hist = bsrem(lik, prior, x_osem, num_subsets=1, num_epochs=300, relaxation_eta=0.02,
                    progress=False, return_history=True)
    assert isinstance(x, torch.Tensor) and x.shape == shape
    torch.testing.assert_close(x, x_map, rtol=2e-3, atol=2e-3)
    # the recorded objective L - R uses the prior's (exact, path) value
    assert hist.objective[-1] >= hist.objective[0]
    assert math.isclose(hist.objective[-1], -ref.fun, rel_tol=1e-6, abs_tol=1e-6)
    # with subsets it runs and improves the objective as well
    x4 = bsrem(lik, prior, x_osem, num_subsets=4, num_epochs=20, progress=False)
    phi = lambda z: float(lik.value(z) - prior.value(z))  # noqa: E731
    assert phi(x4) > phi(x_osem)


def test_from_pretrained_slice_and_volume(tmp_path):
    from sirf_diffusion.diffusion.model import ScoreModel, ScoreModelConfig
    from sirf_diffusion.diffusion.modelio import save_model
    from sirf_diffusion.diffusion.unet import UNetConfig

    cfg = ScoreModelConfig(unet=UNetConfig(base_channels=8, channel_mults=(1,), num_res_blocks=1,
                                           attention_resolutions=(), groupnorm_groups=4),
                           image_size=(8, 8))
    save_model(tmp_path / "xy", ScoreModel(cfg))
    p2 = DiffusionPrior.from_pretrained(tmp_path, sigma=0.3)
    assert isinstance(p2.denoiser, ScoreModel) and p2.get_sigma() == 0.3
    p3 = DiffusionPrior.from_pretrained(tmp_path, volume=True)
    assert isinstance(p3.denoiser, PerpendicularPrior3D) and p3.denoiser.orientations == ("xy",)
    v = torch.rand(2, 8, 8) + 0.5
    p3.set_up(v)
    assert p3.get_gradient(v.numpy()).shape == (2, 8, 8)
    with pytest.raises(FileNotFoundError):
        DiffusionPrior.from_pretrained(tmp_path, volume=True, orientations=("yz",))
