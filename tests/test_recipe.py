"""Training recipes (issue 12): noise-level laws and Min-SNR weighting of the training loss.

Oracles: the Min-SNR formula of Hang et al. 2023 (Eq. 10) at hand-computed noise levels, the
moments of a normal law (sampled, within a few standard errors), exact clipping, a fair coin,
bitwise reproducibility, and the weighted loss of a zero-output network (``mean(w eps^2)``).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_score_model

from sirf_diffusion.diffusion.recipe import TIME_SAMPLINGS, WEIGHTINGS, LossRecipe
from sirf_diffusion.diffusion.schedules import ContinuousVP, DiscreteVP
from sirf_diffusion.diffusion.training import TrainConfig, _LossModule

pytestmark = pytest.mark.usefixtures("one_thread")

VP = ContinuousVP()
T_MIN = 1e-3
N = 40_000


def _uniform(n: int, g: torch.Generator) -> torch.Tensor:
    return T_MIN + (VP.t_max - T_MIN) * torch.rand(n, generator=g)


def _draw(recipe: LossRecipe, seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uniform draws, recipe's t)`` from one generator, in the order training uses."""
    g = torch.Generator().manual_seed(seed)
    u = _uniform(n, g)
    return u, recipe.sample_t(u, VP, T_MIN, g)


# ------------------------------------------------------------------------------ weighting
def _ab(sigma: float) -> torch.Tensor:
    """``alpha_bar`` of the VE noise level ``sigma``: ``SNR = alpha_bar / (1 - alpha_bar) =
    1 / sigma^2``."""
    return torch.tensor([1 / (1 + sigma**2)], dtype=torch.float64)


@pytest.mark.parametrize("sigma, gamma, w_eps, w_v", [
    (0.1, 5.0, 5 / 100, 5 / 101),        # SNR 100 > gamma: capped
    (0.2, 5.0, 5 / 25, 5 / 26),          # SNR 25
    (1 / math.sqrt(5), 5.0, 1.0, 5 / 6),  # SNR = gamma: the cap starts here
    (1.0, 5.0, 1.0, 1 / 2),              # SNR 1 < gamma: eps weight 1, v weight SNR/(SNR+1)
    (10.0, 5.0, 1.0, 0.01 / 1.01),       # SNR 0.01
    (0.5, 1.0, 1 / 4, 1 / 5),            # gamma 1, SNR 4
])
def test_min_snr_weights_match_the_formula(sigma, gamma, w_eps, w_v):
    r = LossRecipe(weighting="min_snr", min_snr_gamma=gamma)
    ab = _ab(sigma)
    assert float(r.weights(ab, "eps")) == pytest.approx(w_eps, rel=1e-12)
    assert float(r.weights(ab, "v")) == pytest.approx(w_v, rel=1e-12)


def test_weights_shape_uniform_and_unsupported_target():
    ab = VP.alpha_bar(torch.linspace(0.01, 1.0, 7)).reshape(-1, 1, 1, 1)
    w = LossRecipe(weighting="min_snr").weights(ab, "eps")
    assert w.shape == ab.shape and bool(((w > 0) & (w <= 1)).all())
    assert LossRecipe().weights(ab, "eps") is None
    assert LossRecipe(time_sampling="lognormal").weights(ab, "v") is None
    with pytest.raises(ValueError, match="eps and v targets, not 'score'"):
        LossRecipe(weighting="min_snr").weights(ab, "score")


@pytest.mark.parametrize("parametrisation", ["eps", "v"])
def test_weighted_loss_of_a_zero_network(parametrisation):
    """A zero-output network (fresh UNet) has squared error ``target^2``: the loss is
    ``mean(w(alpha_bar(t)) * target^2)`` with ``t`` and ``eps`` redrawn from the same seed."""
    m = tiny_score_model(precision="fp32", parametrisation=parametrisation,
                         trained=False).double()
    x0 = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64)
    r = LossRecipe(weighting="min_snr", min_snr_gamma=5.0)
    with torch.no_grad():
        loss = m.training_loss(x0, torch.Generator().manual_seed(2), recipe=r)
    g = torch.Generator().manual_seed(2)
    t = (m.config.t_min + (VP.t_max - m.config.t_min) * torch.rand(64, generator=g)).double()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ab = VP.alpha_bar(t).reshape(-1, 1, 1, 1)
    snr = ab / (1 - ab)
    target = eps if parametrisation == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    w = torch.clamp(snr, max=5.0) / (snr if parametrisation == "eps" else snr + 1)
    assert float(loss) == pytest.approx(float(torch.mean(w * target**2)), rel=1e-10)
    # the weights do something: the plain loss differs
    with torch.no_grad():
        plain = m.training_loss(x0, torch.Generator().manual_seed(2))
    assert abs(float(plain) - float(loss)) > 0.05 * float(plain)


# ------------------------------------------------------------------------- noise levels
def test_uniform_t_returns_the_uniform_draws():
    u, t = _draw(LossRecipe(), n=100)
    assert t is u


def test_lognormal_statistics_of_log_sigma():
    """``ln sigma(t) ~ N(mean, std^2)``: sample mean and standard deviation within 4 standard
    errors (clipping at ``t_min`` touches 0.2 % of the draws for the default law)."""
    for mean, std in ((-1.2, 1.2), (0.0, 0.5), (-2.0, 0.8)):
        r = LossRecipe(time_sampling="lognormal", lognormal_mean=mean, lognormal_std=std)
        u, t = _draw(r, seed=3)
        assert t.dtype == u.dtype and t.shape == u.shape
        assert float(t.min()) >= T_MIN - 1e-9 and float(t.max()) <= VP.t_max
        log_sigma = torch.log(VP.sigma(t.double()))
        se = std / math.sqrt(N)
        assert abs(float(log_sigma.mean()) - mean) < 4 * se + 0.01 * std
        assert abs(float(log_sigma.std()) - std) < 4 * std / math.sqrt(2 * N) + 0.01 * std
        # the median of a normal law is its mean
        assert abs(float((log_sigma < mean).double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(N)


def test_lognormal_is_clipped_to_t_min_and_t_max():
    _, low = _draw(LossRecipe(time_sampling="lognormal", lognormal_mean=-30.0), n=500)
    assert torch.equal(low, torch.full_like(low, T_MIN))
    _, high = _draw(LossRecipe(time_sampling="lognormal", lognormal_mean=30.0), n=500)
    assert torch.equal(high, torch.full_like(high, VP.t_max))
    # a wide law: a share clipped at each end, nothing outside [t_min, t_max]
    _, wide = _draw(LossRecipe(time_sampling="lognormal", lognormal_mean=0.0, lognormal_std=5.0))
    at_min = float((wide == T_MIN).double().mean())
    at_max = float((wide == VP.t_max).double().mean())
    # P(ln sigma < ln sigma(t_min)) and P(ln sigma > ln sigma(t_max)) of N(0, 25)
    ls_min = math.log(float(VP.sigma(torch.tensor(T_MIN, dtype=torch.float64))))
    ls_max = math.log(float(VP.sigma(torch.tensor(VP.t_max, dtype=torch.float64))))
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    tol = 4 * 0.5 / math.sqrt(N)
    assert at_min == pytest.approx(phi(ls_min / 5.0), abs=tol)
    assert at_max == pytest.approx(1 - phi(ls_max / 5.0), abs=tol)
    assert float(wide.min()) >= T_MIN - 1e-9 and float(wide.max()) <= VP.t_max


def test_mixture_is_half_uniform_half_lognormal():
    r = LossRecipe(time_sampling="mixture")
    u, t = _draw(r, seed=5)
    kept = t == u            # a log-normal draw equal to its uniform one has probability 0
    assert abs(float(kept.double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(N)
    # the other half follows the log-normal law
    log_sigma = torch.log(VP.sigma(t[~kept].double()))
    n = int((~kept).sum())
    assert abs(float(log_sigma.mean()) - r.lognormal_mean) < 4 * r.lognormal_std / math.sqrt(n) \
        + 0.01
    # and the kept half is uniform on [t_min, t_max]: mean (t_min + t_max) / 2
    m = int(kept.sum())
    assert abs(float(t[kept].mean()) - (T_MIN + VP.t_max) / 2) < 4 * 0.29 / math.sqrt(m)


@pytest.mark.parametrize("time_sampling", TIME_SAMPLINGS)
def test_same_generator_same_draws(time_sampling):
    r = LossRecipe(time_sampling=time_sampling)
    _, a = _draw(r, seed=11, n=256)
    _, b = _draw(r, seed=11, n=256)
    _, c = _draw(r, seed=12, n=256)
    assert torch.equal(a, b) and not torch.equal(a, c)
    m = tiny_score_model()
    x0 = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    rw = LossRecipe(time_sampling=time_sampling, weighting="min_snr")
    la = m.training_loss(x0, torch.Generator().manual_seed(7), recipe=rw)
    lb = m.training_loss(x0, torch.Generator().manual_seed(7), recipe=rw)
    lc = m.training_loss(x0, torch.Generator().manual_seed(8), recipe=rw)
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    assert la.dtype == torch.float32


# --------------------------------------------------------------- the default is the plain loss
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_default_recipe_is_bit_identical_to_the_plain_loss(precision):
    m = tiny_score_model(precision=precision)
    x0 = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = m.training_loss(x0, torch.Generator().manual_seed(9))
    for r in (LossRecipe(), LossRecipe(min_snr_gamma=2.0, lognormal_mean=0.3)):
        assert torch.equal(m.training_loss(x0, torch.Generator().manual_seed(9), recipe=r),
                           plain)
    assert LossRecipe().is_default and not LossRecipe(weighting="min_snr").is_default
    # the training loop's module passes no recipe for the default one (custom models need
    # only training_loss(x0, generator)) and the recipe otherwise
    assert _LossModule(m, LossRecipe()).recipe is None and _LossModule(m).recipe is None
    lm = _LossModule(m, LossRecipe(time_sampling="mixture"))
    assert not torch.equal(lm(x0, torch.Generator().manual_seed(9)), plain)
    assert torch.equal(lm(x0, torch.Generator().manual_seed(9)),
                       m.training_loss(x0, torch.Generator().manual_seed(9),
                                       recipe=LossRecipe(time_sampling="mixture")))


def test_plain_loss_is_the_documented_formula():
    """The default loss: ``mean((f(x_t, t) - eps)^2)`` with ``t ~ U(t_min, t_max)`` then
    ``eps ~ N(0, I)`` from the generator (Ho et al. 2020, Eq. 14) - bitwise."""
    m = tiny_score_model(precision="fp32")
    x0 = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = m.training_loss(x0, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    t = m.config.t_min + (VP.t_max - m.config.t_min) * torch.rand(4, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ab = VP.alpha_bar(t).reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    assert torch.equal(loss, torch.mean((m._net(x_t, t) - eps) ** 2))


# ------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("time_sampling", ["lognormal", "mixture"])
def test_discrete_schedules_refuse_non_uniform_sampling(time_sampling):
    m = tiny_score_model(schedule=DiscreteVP.linear(1000).to_dict())
    x0 = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="time_sampling other than 'uniform_t' needs a "
                                         "continuous schedule"):
        m.training_loss(x0, torch.Generator().manual_seed(0),
                        recipe=LossRecipe(time_sampling=time_sampling))
    # uniform t with Min-SNR weights is fine on a discrete schedule
    loss = m.training_loss(x0, torch.Generator().manual_seed(0),
                           recipe=LossRecipe(weighting="min_snr"))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("fields, match", [
    ({"time_sampling": "beta"}, "time_sampling must be one of uniform_t, lognormal, mixture"),
    ({"weighting": "p2"}, "weighting must be one of uniform, min_snr"),
    ({"min_snr_gamma": 0.0}, "min_snr_gamma must be > 0"),
    ({"min_snr_gamma": float("nan")}, "min_snr_gamma must be > 0"),
    ({"lognormal_std": -1.0}, "lognormal_std must be > 0"),
])
def test_bad_recipes_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        LossRecipe(**fields)
    with pytest.raises(ValueError, match=match):
        TrainConfig(recipe=fields)
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({"recipe": fields})


def test_train_config_validates_recipe_and_precision():
    assert TrainConfig().precision == "auto" and TrainConfig().recipe == {}
    cfg = TrainConfig(precision="bf16", recipe={"time_sampling": "mixture",
                                                "weighting": "min_snr"})
    assert LossRecipe(**cfg.recipe) == LossRecipe("mixture", "min_snr")
    with pytest.raises(ValueError, match=r"unknown TrainConfig.recipe fields: \['gamma'\]"):
        TrainConfig(recipe={"gamma": 5.0})
    with pytest.raises(TypeError, match="TrainConfig.recipe must be a dict"):
        TrainConfig(recipe="lognormal")  # type: ignore[arg-type]
    for bad in ("fp16", "BF16", ""):
        with pytest.raises(ValueError, match=r"^TrainConfig.precision must be one of auto, fp32, "
                                             "bf16"):
            TrainConfig(precision=bad)
    assert set(WEIGHTINGS) == {"uniform", "min_snr"}
    assert LossRecipe(**LossRecipe("lognormal", "min_snr", 3.0).to_dict()) == \
        LossRecipe("lognormal", "min_snr", 3.0)
