"""PET-DDS, DPS, posterior summaries and reconstruct(): analytic oracles, no trained network."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import GaussianDenoiser, gaussian_denoiser, poisson_problem

from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
from sirf_diffusion.likelihood import PoissonLogLikelihood, ProjectionCounter
from sirf_diffusion.physics.base import DenseMatrixPhysics
from sirf_diffusion.recon.em import mlem, osem
from sirf_diffusion.recon.priors import RelativeDifferencePrior
from sirf_diffusion.samplers.dds import AnchoredEMDC
from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS
from sirf_diffusion.samplers.dps import PoissonDPSDC
from sirf_diffusion.samplers.loop import StepContext, ddim_noise_levels, reverse_diffusion
from sirf_diffusion.samplers.methods import reconstruct
from sirf_diffusion.samplers.posterior import plot_posterior, save_posterior, summarise
from sirf_diffusion.samplers.run import COMMON_OPTIONS, METHODS, prepare, resolve_options

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def ctx(step, num_steps, x, sigma=1.0, denoiser=None):
    s = torch.tensor(sigma, dtype=DT)
    return StepContext(step, num_steps, s, s * 0.5, x, denoiser)


# ---------------------------------------------------------------- (a) exact (OS)EM steps
def test_dds_without_anchor_is_exactly_mlem_and_osem():
    lik, truth = poisson_problem()
    norm = IntensityNormalisation(2.5)
    u = truth[None] * 0.8 + 0.1
    x0 = norm.to_prior(u)
    rule = AnchoredEMDC(lik, norm, beta=0.0, num_subiterations=1, record_pll=False)
    c = ctx(0, 1, x0)
    out = rule(x0, c)
    assert torch.equal(out, norm.to_prior(mlem(lik, u, num_iterations=1, progress=False)))
    assert c.info["n_likelihood_steps"] == 1 and c.info["n_likelihood_evaluations"] == 1.0
    # two view subsets: three sub-iterations are OSEM's subsets 0, 1, 0 (STIR's order)
    rule = AnchoredEMDC(lik, norm, beta=0.0, num_subsets=2, num_subiterations=3)
    c = ctx(0, 1, x0)
    out = rule(x0, c)
    ref = osem(lik, u, num_subsets=2, num_subiterations=3, progress=False)
    assert torch.equal(out, norm.to_prior(ref))
    assert c.info["n_likelihood_evaluations"] == pytest.approx(1.5)
    assert lik.physics.num_subsets == 1                      # restored after the call
    assert c.info["pll"] == pytest.approx(lik.value(ref).tolist(), rel=1e-12)


def test_dds_step_converges_to_the_anchored_penalised_maximiser():
    """Many epochs reach the KKT point of L(u) - beta/2 ||u - a||^2 - R_z(u), u >= 0."""
    lik, truth = poisson_problem(image_shape=(3, 3, 3), num_views=6, num_tangential=8)
    norm = IntensityNormalisation(1.0)
    a = truth[None] * torch.linspace(0.5, 1.5, 27, dtype=DT).reshape(1, 3, 3, 3)
    rdp = RelativeDifferencePrior(2.0, neighbourhood="axial")
    beta = 0.7
    rule = AnchoredEMDC(lik, norm, beta=beta, num_epochs=3000, penalty=rdp, record_pll=False)
    u = norm.from_prior(rule(norm.to_prior(a), ctx(0, 1, a)))
    grad = lik.gradient(u) + beta * (a - u) - rdp.gradient(u)
    scale = lik.sensitivity(like=u).mean()
    assert bool((u > 0).all())
    assert float(grad.abs().max()) < 1e-6 * float(scale), float(grad.abs().max())
    # without the anchor and penalty it is a different point (the oracle can fail)
    free = norm.from_prior(AnchoredEMDC(lik, norm, num_epochs=3000, record_pll=False)(
        norm.to_prior(a), ctx(0, 1, a)))
    assert float((free - u).abs().max()) > 1e-2


# ---------------------------------------------------------------- (c) linear-Gaussian oracle
class GaussianLikelihood:
    """Test double with the likelihood interface the DDS rule uses: L(u) = -||y - Au - b||^2 / 2r.

    ``sensitivity`` is a constant majorant, so the EM-preconditioned ascent is a scaled gradient
    ascent that converges to the maximiser of the anchored quadratic.
    """

    def __init__(self, physics, data, noise_var, sens):
        self.physics, self.data, self.r, self.sens = physics, data, noise_var, sens
        self.image_shape = physics.image_shape
        self.projections = ProjectionCounter()

    def subsets(self, num_subsets):
        return self.physics.subsets(num_subsets)

    def count_projections(self):
        return self.projections.scope()

    def value_and_gradient(self, u, subset=None):
        self.projections.add(1.0, 1.0)
        res = self.data - self.physics.forward(u, subset)
        value = -(res**2).sum((-3, -2, -1)) / (2 * self.r)
        return value, self.physics.adjoint(res, subset) / self.r

    def sensitivity(self, subset=None, like=None):
        return torch.full(self.physics.image_shape, self.sens, dtype=like.dtype)


def test_dds_loop_matches_the_exact_law_of_a_linear_gaussian_problem():
    """Prior x0 ~ N(mu, v I) (normalised), physical x = s x0, data y = A x + b + N(0, r I).

    With beta_t = 1 / (s^2 c_t), c_t = v sigma_t^2 / (v + sigma_t^2), the anchored step solves
    E[x | x_t, y] exactly, and every map of the loop is affine: the law of the output is the
    Gaussian obtained by propagating mean and covariance through them.  Monte Carlo samples of
    the real loop + rule must match it (any error in the normalisation, anchor, beta, subsets or
    re-noising shows).  DDS re-noises with the unconditioned noise estimate, so this law is not
    the posterior: its mean is close to the posterior mean, its variance much smaller.
    """
    g = torch.Generator().manual_seed(0)
    d, m = 3, 5
    Q, _ = torch.linalg.qr(torch.randn(m, d, generator=g, dtype=DT))
    A = Q * math.sqrt(10.0)
    phys = DenseMatrixPhysics(A, (1, 1, d), (1, 1, m),
                              additive=torch.full((1, 1, m), 0.5, dtype=DT))
    s, mu, v, r = 2.0, 4.0, 0.25, 1.0
    x_true = s * (mu + math.sqrt(v) * torch.randn(1, 1, d, generator=g, dtype=DT))
    y = phys.forward(x_true) + math.sqrt(r) * torch.randn(1, 1, m, generator=g, dtype=DT)
    N, eta, n = 40, 1.0, 3000
    sig = torch.cat([torch.exp(torch.linspace(math.log(20), math.log(0.05), N, dtype=DT)),
                     torch.zeros(1, dtype=DT)])
    c = v * sig[:-1] ** 2 / (v + sig[:-1] ** 2)
    beta = 1 / (s**2 * c)
    lik = GaussianLikelihood(phys, y, r, sens=10 * (10 + float(beta.max())))
    norm = IntensityNormalisation(s)
    rule = AnchoredEMDC(lik, norm, beta=beta, num_epochs=40, record_pll=False)
    D = GaussianDenoiser(torch.full((1, 1, 1, d), mu, dtype=DT),
                         torch.full((1, 1, 1, d), v, dtype=DT))
    out = reverse_diffusion(D, sig, shape=(n, 1, 1, d), eta=eta, data_consistency=rule,
                            generator=torch.Generator().manual_seed(1), progress=False, dtype=DT)
    xs = norm.from_prior(out).reshape(n, d)
    # exact law (normalised space): x0 = k x + (1 - k) mu;  x0' = beta H^-1 x0 + H^-1 A^T yb / (r s)
    eye, yb = torch.eye(d, dtype=DT), (y - 0.5).reshape(m)
    mean, cov = torch.zeros(d, dtype=DT), sig[0] ** 2 * eye
    for i in range(N):
        k = v / (v + sig[i] ** 2)
        Hinv = torch.linalg.inv(A.T @ A / r + beta[i] * eye)
        det, sto = ddim_noise_levels(sig[i], sig[i + 1], eta)
        F = beta[i] * Hinv * k + det * (1 - k) / sig[i] * eye
        f = (beta[i] * Hinv @ torch.full((d,), (1 - k) * mu, dtype=DT) + Hinv @ A.T @ yb / (r * s)
             - det * (1 - k) * mu / sig[i])
        mean, cov = F @ mean + f, F @ cov @ F.T + sto**2 * eye
    mean, var = s * mean, s**2 * torch.diag(cov)
    se = torch.sqrt(var / n)
    assert bool(((xs.mean(0) - mean).abs() < 5 * se).all()), (xs.mean(0), mean, se)
    assert bool(((xs.var(0) - var).abs() < 5 * var * math.sqrt(2 / (n - 1)) + 0.01 * var).all())
    # the true posterior, for reference: mean within 0.5 posterior std, variance far larger
    P = torch.linalg.inv(eye / (s**2 * v) + A.T @ A / r)
    m_post = P @ (s * mu * torch.ones(d, dtype=DT) / (s**2 * v) + A.T @ yb / r)
    assert bool(((xs.mean(0) - m_post).abs() < 0.5 * torch.sqrt(torch.diag(P))).all())
    assert bool((xs.var(0) < 0.5 * torch.diag(P)).all())


# ---------------------------------------------------------------- DPS
def test_dps_correction_is_the_scaled_misfit_gradient_through_the_denoiser():
    lik, truth = poisson_problem()
    s, zeta, sigma = 2.0, 0.3, 0.7
    norm = IntensityNormalisation(s)
    mu = torch.ones(1, 1, 4, 4, dtype=DT)
    var = torch.full_like(mu, 0.2)
    D = GaussianDenoiser(mu, var)
    x = norm.to_prior(truth[None]) + 0.1 * torch.randn(2, 1, 4, 4, generator=torch.Generator()
                                                       .manual_seed(0), dtype=DT)
    x0 = D(x, torch.tensor([sigma, sigma], dtype=DT))
    c = ctx(0, 1, x, sigma=sigma, denoiser=D)
    out = PoissonDPSDC(lik, norm, zeta)(x0, c)
    # oracle: autograd of KL(y || A(s max(D(x), 0)) + b) through everything, normalised by KL
    xg = x.clone().requires_grad_(True)
    x0g = D(xg, torch.tensor(sigma, dtype=DT))
    ybar = lik.physics.forward(norm.from_prior(torch.clamp(x0g, min=0)))
    y = lik.data
    kl = (torch.where(y > 0, y * torch.log(y / ybar), 0.0) - y + ybar).sum((-3, -2, -1))
    (grad,) = torch.autograd.grad(kl.sum(), xg)
    expected = x0 - zeta / kl.detach().reshape(-1, 1, 1, 1) * grad
    assert torch.allclose(out - x0, expected - x0, rtol=1e-10, atol=1e-14)
    assert c.info["misfit"] == pytest.approx(kl.tolist(), rel=1e-10)
    # closed form for this denoiser: d u / d x = s k, so the gradient is s k grad_u KL
    k = var / (var + sigma**2)
    u = norm.from_prior(torch.clamp(x0, min=0))
    closed = x0 - zeta / kl.detach().reshape(-1, 1, 1, 1) * s * k * (-lik.gradient(u))
    assert torch.allclose(out - x0, closed - x0, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- (e) posterior summaries
def test_posterior_summary_of_known_samples(tmp_path):
    mean = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]], dtype=DT)       # [z, y, x] = [1, 2, 2]
    d = torch.tensor([[[0.5, 1.0], [0.0, 0.0]]], dtype=DT)
    samples = torch.stack([mean - d, mean + d, mean])               # n = 3
    summ = summarise(samples)
    assert torch.allclose(summ.mean, mean)
    assert torch.allclose(summ.std, d)                              # sqrt(2 d^2 / (3 - 1))
    assert torch.allclose(summ.cov, torch.tensor([[[0.5, 0.5], [0.0, 0.0]]], dtype=DT))
    assert summ.support.tolist() == [[[True, True], [True, False]]] and summ.num_samples == 3
    masked = summarise(samples, mask=torch.tensor([[[True, False], [True, True]]]))
    assert masked.cov.tolist() == [[[0.5, 0.0], [0.0, 0.0]]]
    one = summarise(samples[:1])
    assert torch.equal(one.std, torch.zeros_like(mean))
    npz = save_posterior(summ, tmp_path / "post.npz", samples=samples)
    with np.load(npz) as f:
        assert np.allclose(f["std"], d.numpy()) and f["samples"].shape == (3, 1, 2, 2)
    png = plot_posterior(summ, tmp_path / "post.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="mask"):
        summarise(samples, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        summarise(samples * float("nan"))


# -------------------------------------------------- (f) reconstruct(): runs, reproducible
@pytest.mark.parametrize("method,options", [
    ("lisch", {"num_mlem_iterations": 4}),
    ("dds", {"beta": 0.1, "num_subsets": 2, "num_epochs": 1}),
    ("dps", {"step_size": 0.5}),
])
def test_reconstruct_is_reproducible_with_a_generator(method, options):
    lik, truth = poisson_problem()
    mu = torch.ones(1, 1, 4, 4, dtype=DT)
    D = GaussianDenoiser(mu, torch.full_like(mu, 0.3))

    def run(seed):
        return reconstruct(method, lik, D, num_steps=8, eta=0.5, num_samples=2,
                           generator=torch.Generator().manual_seed(seed), progress=False,
                           dtype=DT, **options)

    a, b, other = run(3), run(3), run(4)
    assert torch.equal(a.sample, b.sample) and not torch.equal(a.sample, other.sample)
    assert a.sample.shape == (2, 1, 4, 4) and bool((a.sample >= 0).all())
    assert a.mean.shape == (1, 4, 4) and a.pll.shape == (8, 2) and bool(torch.isfinite(a.pll).all())
    assert a.num_network_evaluations == (16 if method == "dps" else 8)
    assert a.num_likelihood_evaluations > 0 and a.num_init_evaluations > 0
    assert a.init_image is not None and a.config["method"] == method
    init = a.init_image
    assert a.normalisation.scale == pytest.approx(float(init[init > 0.05 * init.max()].mean()))
    assert torch.allclose(a.summary().mean, a.mean)


def test_reconstruct_result_saves_outputs_and_config(tmp_path):
    lik, truth = poisson_problem()
    mu = torch.ones(1, 1, 4, 4, dtype=DT)
    r = reconstruct("lisch", lik, GaussianDenoiser(mu, torch.full_like(mu, 0.3)), num_steps=4,
                    num_mlem_iterations=3, num_samples=2, progress=False, dtype=DT,
                    generator=torch.Generator().manual_seed(0))
    out = r.save(tmp_path / "run")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "lisch" and cfg["num_mlem_iterations"] == 3
    assert len(cfg["mlem_pll"]) == 4
    assert cfg["num_likelihood_evaluations"] == r.num_likelihood_evaluations
    with np.load(out / "trajectory.npz") as f:
        assert np.allclose(f["pll_target"], r.pll_target.numpy()) and f["pll"].shape == (4, 2)
    with np.load(out / "posterior.npz") as f:
        assert np.allclose(f["mean"], r.mean.numpy()) and f["samples"].shape == (2, 1, 4, 4)
    assert (out / "posterior.png").stat().st_size > 0


def test_reconstruct_dds_with_axial_penalty_and_callback():
    lik, truth = poisson_problem(image_shape=(2, 3, 3), num_views=6, num_tangential=5)
    mu = torch.ones(1, 1, 2, 3, 3, dtype=DT)
    D = GaussianDenoiser(mu, torch.full_like(mu, 0.3))
    seen = []

    def cb(d):
        seen.append((d["i"], d["n_likelihood_steps"]))
        if d["i"] == 3:
            raise StopIteration

    r = reconstruct("dds", lik, D, IntensityNormalisation(float(truth.mean())), num_steps=10,
                    num_samples=1, axial_penalty=0.5, beta=0.2, num_subiterations=2, callback=cb,
                    progress=False, dtype=DT, generator=torch.Generator().manual_seed(0))
    assert seen == [(0, 2), (1, 2), (2, 2), (3, 2)] and r.pll.shape == (4, 1)
    assert r.init_image is None and r.num_init_evaluations == 0
    assert r.config["penalty"] == "RelativeDifferencePrior"


# ---------------------------------------------------------------- (g) bad inputs
@pytest.mark.parametrize(("method", "options", "error", "match"), [
    ("mlem", {}, ValueError, "method must be one of"),
    ("lisch", {"beta": 1.0}, ValueError, "beta do not apply to method 'lisch'"),
    ("dps", {"step_size": 1.0, "num_mlem_iterations": 3}, ValueError,
     "num_mlem_iterations do not apply to method 'dps'"),
    ("lisch", {"init_epochs": 3}, ValueError, "init_epochs do not apply to method 'lisch'"),
    ("dds", {"num_step": 2}, TypeError, "unknown option.*num_step.*did you mean num_steps"),
    ("dps", {"num_steps": 2, "step_size": 0.0}, ValueError, "step_size"),
    ("dds", {"eta": 1.5}, ValueError, "eta"),
    ("dds", {"num_samples": 0}, ValueError, "num_samples"),
    ("dds", {"num_steps": 3, "sigmas": torch.tensor([1.0, 0.0])}, ValueError,
     "num_steps=3 but sigmas"),
])
def test_reconstruct_rejects_bad_options(method, options, error, match):
    """A clear error for an unknown method, options of another method, or bad values."""
    lik, _ = poisson_problem()
    D = GaussianDenoiser(torch.ones(1, 1, 4, 4, dtype=DT), torch.ones(1, 1, 4, 4, dtype=DT))
    with pytest.raises(error, match=match):
        reconstruct(method, lik, D, IntensityNormalisation(1.0), progress=False, **options)


def test_bad_inputs_raise_clear_errors():
    lik, truth = poisson_problem()
    D = GaussianDenoiser(torch.ones(1, 1, 4, 4, dtype=DT), torch.ones(1, 1, 4, 4, dtype=DT))
    norm = IntensityNormalisation(1.0)
    bad = lik.data.clone()
    bad[0, 0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        PoissonLogLikelihood(lik.physics, bad)
    with pytest.raises(ValueError, match="shape"):
        PoissonLogLikelihood(lik.physics, lik.data[..., :-1])
    with pytest.raises(TypeError, match="Likelihood"):
        reconstruct("dds", object(), D, norm, progress=False)              # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        AnchoredEMDC(lik, norm, beta=-1.0)
    with pytest.raises(ValueError, match="num_subsets"):
        AnchoredEMDC(lik, norm, num_subsets=100)
    with pytest.raises(ValueError, match="at most one"):
        AnchoredEMDC(lik, norm, num_epochs=1, num_subiterations=2)
    with pytest.raises(ValueError, match="step_size"):
        PoissonDPSDC(lik, norm, step_size=-1.0)
    with pytest.raises(ValueError, match="step_normalisation"):
        PoissonDPSDC(lik, norm, step_size=1.0, step_normalisation="l2")     # type: ignore[arg-type]
    # a denoiser/normalisation layout that does not fit the scanner's image grid
    rule = AnchoredEMDC(lik, norm)
    x = torch.ones(1, 1, 2, 4, 4, dtype=DT)
    with pytest.raises(ValueError, match="image_shape"):
        rule(x, ctx(0, 1, x))
    D3 = GaussianDenoiser(torch.ones(1, 1, 2, 4, 4, dtype=DT), torch.ones(1, 1, 2, 4, 4, dtype=DT))
    with pytest.raises(ValueError, match="image_shape"):
        PoissonDPSDC(lik, norm, step_size=1.0)(x, ctx(0, 1, x, denoiser=D3))
    with pytest.raises(ValueError, match="values but the reverse diffusion"):
        AnchoredEMDC(lik, norm, beta=torch.ones(3))(norm.to_prior(truth[None]),
                                                     ctx(0, 2, norm.to_prior(truth[None])))


def test_intensity_scale_ignores_barely_seen_voxels():
    """A voxel at the rim of the field of view, seen by almost no ray, takes an arbitrary EM
    value; the fitted scale (mean over the support) must come from the well-sampled voxels."""
    from sirf_diffusion.diffusion.normalisation import support_mean, well_sampled

    lik, truth = poisson_problem(seed=3)
    A = lik.physics.matrix.clone()
    A[:, 0] = 0
    A[0, 0] = 1e-7          # voxel 0: one ray, tiny weight
    phys = DenseMatrixPhysics(A, lik.physics.image_shape, lik.physics.data_shape,
                              additive=lik.physics.additive_term)
    y = lik.data.clone()
    y[0, 0, 0] += 50        # counts in its only bin: MLEM puts a huge value there
    lik2 = PoissonLogLikelihood(phys, y)
    x = mlem(lik2, None, num_iterations=20, progress=False)
    assert float(x.flatten()[0]) > 100 * float(x.flatten()[1:].max())
    eligible = well_sampled(lik2.sensitivity(None, like=x))
    assert not bool(eligible.flatten()[0]) and bool(eligible.flatten()[1:].all())
    s = float(support_mean(x[None], eligible=eligible[None])[0])
    rest = x.flatten()[1:]
    assert s == pytest.approx(float(rest[rest > 0.05 * rest.max()].mean()), rel=1e-6)
    assert float(support_mean(x[None])[0]) > 10 * s   # without it, the rim voxel sets the scale
    res = reconstruct("dds", lik2, GaussianDenoiser(torch.ones(1, 1, 4, 4, dtype=DT),
                                                     torch.full((1, 1, 4, 4), 0.5, dtype=DT)),
                      num_steps=3, progress=False, dtype=DT,
                      generator=torch.Generator().manual_seed(0))
    assert res.normalisation.scale < 10 * float(truth.mean())


# ---------------------------------------------------------------- (h) prepare and the run
def test_one_table_of_options_with_the_defaults_of_method_defaults():
    assert set(METHODS) == set(METHOD_DEFAULTS)
    for name, spec in METHODS.items():
        d = spec.defaults()
        assert set(d) == set(COMMON_OPTIONS) | set(spec.options)
        for k, v in METHOD_DEFAULTS[name].items():      # every default is an option, and used
            assert d[k] == v
        assert resolve_options(name, {}) == d
        assert resolve_options(name, {"eta": None})["eta"] == METHOD_DEFAULTS[name]["eta"]


def test_defaults_reach_the_run():
    lik, _ = poisson_problem(dtype=torch.float32)
    D = gaussian_denoiser()
    for method in (m for m in METHODS if m != "deft"):  # deft: tests/test_deft.py (a model)
        run = prepare(method, lik, D)
        d = METHOD_DEFAULTS[method]
        assert run.stepper.num_steps == d["num_steps"] == run.config["num_steps"]
        assert run.config["num_samples"] == d["num_samples"] == run.stepper.x.shape[0]
    dps = prepare("dps", lik, D)
    assert dps.rule.step_size == METHOD_DEFAULTS["dps"]["step_size"]
    lisch = prepare("lisch", lik, D, num_steps=3)
    assert len(lisch.config["mlem_pll"]) == METHOD_DEFAULTS["lisch"]["num_mlem_iterations"] + 1


@pytest.mark.parametrize("method,options", [
    ("lisch", {"num_mlem_iterations": 4}),
    ("dds", {"beta": 0.5, "num_subsets": 2, "init_epochs": 3}),
    ("dps", {"step_size": 0.5, "init_subsets": 2}),
])
def test_stepping_a_prepared_run_is_reconstruct(method, options):
    lik, _ = poisson_problem(dtype=torch.float32)  # float32: the samplers' default dtype
    D = gaussian_denoiser()
    ref = reconstruct(method, lik, D, num_steps=5, eta=0.5, num_samples=2,
                      generator=torch.Generator().manual_seed(3), progress=False, **options)
    run = prepare(method, lik, D, num_steps=5, eta=0.5, num_samples=2,
                  generator=torch.Generator().manual_seed(3), **options)
    assert run.samples() is None and not run.done
    torch.testing.assert_close(run.estimate(), run.init_image.reshape(lik.image_shape))
    assert math.isfinite(run.init_pll)
    infos = []
    while not run.done:
        infos.append(run.step())
    assert torch.equal(run.samples(), ref.sample)
    assert run.normalisation.to_dict() == ref.normalisation.to_dict()
    torch.testing.assert_close(run.estimate(), ref.mean)
    res = run.result()
    assert torch.equal(res.pll, ref.pll) and torch.equal(res.likelihood_steps, ref.likelihood_steps)
    assert res.num_network_evaluations == ref.num_network_evaluations
    assert res.num_likelihood_evaluations == ref.num_likelihood_evaluations
    assert res.config == ref.config
    with pytest.raises(StopIteration):
        run.step()


def test_an_early_stop_keeps_the_last_data_consistent_estimate():
    lik, _ = poisson_problem()
    D = gaussian_denoiser(dtype=DT)
    seen = []

    def stop(d):
        seen.append(d["denoised_dc"])
        if d["i"] == 1:
            raise StopIteration

    r = reconstruct("dds", lik, D, num_steps=5, num_samples=1, dtype=DT, progress=False,
                    sigmas=torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=DT), callback=stop,
                    generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and r.pll.shape == (2, 1)
    torch.testing.assert_close(r.sample, torch.clamp(r.normalisation.from_prior(seen[-1]), min=0))


def test_prepare_refuses_wrong_options_before_any_work():
    lik, _ = poisson_problem()
    D = gaussian_denoiser(dtype=DT)
    with pytest.raises(ValueError, match="method must be"):
        prepare("sde", lik, D, num_steps=2)                                # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not apply to method 'lisch'.*num_mlem_iterations"):
        prepare("lisch", lik, D, num_steps=2, beta=1.0)
    with pytest.raises(ValueError, match="num_steps=3 but sigmas"):
        prepare("dds", lik, D, num_steps=3, sigmas=torch.tensor([1.0, 0.0]))
    with pytest.raises(TypeError, match="PoissonLogLikelihood"):
        prepare("dds", object(), D, num_steps=2)                           # type: ignore[arg-type]
    f0 = lik.num_forward
    with pytest.raises(ValueError, match="give at most one of axial_penalty and penalty"):
        prepare("dds", lik, D, axial_penalty=1.0, penalty=RelativeDifferencePrior(1.0))
    assert lik.num_forward == f0                                           # no OSEM was run
