"""Network precision (issue 12): bfloat16 autocast and channels-last for the score network only.

Oracles: the dtype/format the code promises, float32 references of the same weights, forward
finite differences of a float64 model, bitwise equal files; nothing needs AVX512-BF16 (a CPU
without it emulates bfloat16, slowly but correctly).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from conftest import poisson_problem, tiny_score_model

from sirf_diffusion.diffusion import precision as prec
from sirf_diffusion.diffusion.adapters import vp_inputs
from sirf_diffusion.diffusion.modelio import WEIGHTS_FILE, load_model, save_model
from sirf_diffusion.diffusion.precision import (
    bf16_native,
    check_precision,
    network_autocast,
    resolve_precision,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = "SIRF_DIFFUSION_PRECISION"
CL = torch.channels_last


def _x(batch: int = 3, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


def _net_out(model, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The UNet's raw output ``f(x_vp, t)`` through :meth:`ScoreModel._net`."""
    _, x_vp, t = vp_inputs(x, sigma, model.schedule)
    return model._net(x_vp, t)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _conv_weights(model) -> list[torch.Tensor]:
    """The 3 x 3 kernels with several input channels (whose two formats differ in memory)."""
    return [p for p in model.unet.parameters()
            if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]


def _is_channels_last(model) -> bool:
    ws = _conv_weights(model)
    cl = [w.is_contiguous(memory_format=CL) and not w.is_contiguous() for w in ws]
    assert all(cl) or not any(cl), "mixed weight memory formats"
    return all(cl)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


# ----------------------------------------------------------------------- resolve_precision
def test_resolve_explicit_and_auto(monkeypatch, no_env):
    assert resolve_precision("fp32") == torch.float32
    assert resolve_precision("bf16") == torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(prec, "bf16_native", lambda device_type="cpu", n=native: n)
        assert resolve_precision("auto") == expected
        assert resolve_precision("auto", "cpu") == expected
        # an explicit choice ignores the hardware
        assert resolve_precision("fp32") == torch.float32
        assert resolve_precision("bf16") == torch.bfloat16


def test_environment_overrides_auto_only(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(prec, "bf16_native", lambda device_type="cpu", n=native: n)
        monkeypatch.setenv(ENV, "fp32")
        assert resolve_precision("auto") == torch.float32
        assert resolve_precision("bf16") == torch.bfloat16      # explicit wins over the env
        monkeypatch.setenv(ENV, " bf16 ")                       # whitespace is ignored
        assert resolve_precision("auto") == torch.bfloat16
        assert resolve_precision("fp32") == torch.float32
        monkeypatch.setenv(ENV, "")                             # empty: the hardware decides
        assert resolve_precision("auto") == (torch.bfloat16 if native else torch.float32)
        monkeypatch.setenv(ENV, "auto")                         # 'auto' in the env: the same
        assert resolve_precision("auto") == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("bad", ["fp16", "float32", "BF16", "", None])
def test_bad_precision_names_the_argument(bad, no_env):
    with pytest.raises(ValueError, match=r"^precision must be one of auto, fp32, bf16, got"):
        resolve_precision(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^--precision must be one of"):
        check_precision(bad, "--precision")  # type: ignore[arg-type]
    assert check_precision("bf16") == "bf16"


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV, "half")
    with pytest.raises(ValueError, match=rf"^\${ENV} must be one of auto, fp32, bf16, got 'half'"):
        resolve_precision("auto")
    assert resolve_precision("fp32") == torch.float32   # not read for an explicit choice


def test_bf16_native_needs_the_cpu_flags(monkeypatch):
    bf16_native.cache_clear()
    try:
        monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
        assert bf16_native("cpu") is False
        bf16_native.cache_clear()
        monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
        assert bf16_native("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        assert bf16_native("mps") is False and bf16_native("meta") is False
        assert bf16_native("cuda") is bool(torch.cuda.is_available()
                                           and torch.cuda.is_bf16_supported())
    finally:
        bf16_native.cache_clear()


def test_network_autocast():
    with network_autocast(torch.float32, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with network_autocast(torch.bfloat16, torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------------- ScoreModel: dtypes
def test_precision_setter_and_constructor_validate():
    m = tiny_score_model(precision="fp32")
    assert m.precision == "fp32" and m.network_dtype() == torch.float32
    m.precision = "bf16"
    assert m.precision == "bf16" and m.network_dtype() == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        m.precision = "fp16"
    assert m.precision == "bf16"                        # unchanged by the refused value
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_score_model(precision="half")
    assert tiny_score_model().precision == "auto"       # the default


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_output_has_the_input_dtype_under_bf16(dtype, mode):
    m = tiny_score_model(precision="bf16").train(mode == "train")
    x, s = _x(dtype=dtype), torch.tensor([0.1, 1.0, 10.0], dtype=dtype)
    with torch.no_grad():
        out = m(x, s)
        raw = _net_out(m, x, s)
    assert out.dtype == dtype and raw.dtype == dtype
    assert out.shape == x.shape and out.is_contiguous() and torch.isfinite(out).all()
    # a float64 model: autocast leaves float64 alone, the network runs in float64 (in eval
    # mode channels-last: another summation order, hence not bitwise)
    m64 = copy.deepcopy(m).double()
    with torch.no_grad():
        out64 = m64(x.double(), s.double())
    assert out64.dtype == torch.float64
    ref = copy.deepcopy(m64)
    ref.precision = "fp32"
    with torch.no_grad():
        torch.testing.assert_close(out64, ref(x.double(), s.double()), rtol=1e-12, atol=1e-12)


def test_bf16_is_close_to_fp32_and_really_runs_in_bf16():
    """Same weights: the network output differs by bfloat16 rounding (8-bit mantissa: ~0.4 %
    per operation), not more, and not zero (the autocast is active)."""
    fp32, bf16 = tiny_score_model(precision="fp32"), tiny_score_model(precision="bf16")
    x = _x(4)
    for sigma in (0.05, 0.5, 5.0):
        s = torch.full((4,), sigma)
        for mode in (True, False):                  # training (contiguous) and eval (CL)
            fp32.train(mode)
            bf16.train(mode)
            with torch.no_grad():
                a, b = _net_out(fp32, x, s), _net_out(bf16, x, s)
                d32, d16 = fp32(x, s), bf16(x, s)
            assert 1e-4 < _rel(b, a) < 2e-2, (sigma, mode, _rel(b, a))
            assert _rel(d16, d32) < 2e-2
    # float64 iterates through float32 weights (the input is cast to the weights' dtype)
    with torch.no_grad():
        d64 = fp32(x.double(), s.double())
    torch.testing.assert_close(d64, fp32(x, s).double(), rtol=1e-6, atol=1e-6)


def test_channels_last_only_in_eval_with_bf16():
    """``channels_last=None``: channels-last weights and activations exactly in evaluation
    mode with bfloat16; an explicit True/False is obeyed; the output is always contiguous."""
    x, s = _x(2), torch.tensor([0.3, 3.0])
    m = tiny_score_model(precision="bf16")
    assert m.channels_last is None and not _is_channels_last(m)
    cases = [("bf16", False, None, False), ("bf16", True, None, True),
             ("fp32", True, None, False), ("fp32", False, None, False),
             ("fp32", False, True, True), ("fp32", True, True, True),
             ("bf16", True, False, False), ("bf16", False, False, False),
             ("bf16", True, None, True), ("bf16", False, None, False)]   # and back again
    for precision, evaluation, channels_last, expected in cases:
        m.precision, m.channels_last = precision, channels_last
        m.train(not evaluation)
        dtype = resolve_precision(precision)
        assert (m._memory_format(dtype) == CL) is expected
        with torch.no_grad():
            out = m(x, s)
        assert _is_channels_last(m) is expected, (precision, evaluation, channels_last)
        assert out.is_contiguous() and out.dtype == torch.float32
    # the memory format does not change the numbers beyond rounding
    m.train(False)
    m.precision = "fp32"
    ref = tiny_score_model(precision="fp32").eval()
    for channels_last in (True, False):
        m.channels_last = channels_last
        with torch.no_grad():
            torch.testing.assert_close(m(x, s), ref(x, s), rtol=1e-5, atol=1e-5)


def test_a_compiled_network_is_called_without_asking_its_truth_value():
    """``compile=True`` keeps a ``torch.compile`` wrapper of the UNet, which refuses
    ``bool()`` (it forwards ``len()`` to the UNet): the model must call it, under autocast."""
    m = tiny_score_model(precision="bf16")
    calls = []

    class Compiled:
        def __len__(self):
            raise TypeError("UNet does not support len()")

        def __call__(self, x, t):
            calls.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                         else None)
            return m.unet(x, t)

    m.__dict__["_compiled_unet"] = Compiled()
    x, s = _x(2), torch.tensor([0.5, 1.0])
    with torch.no_grad():
        out = m(x, s)
    assert calls == [torch.bfloat16] and out.dtype == torch.float32


# --------------------------------------------------------------------------- training loss
def test_training_loss_is_float32_and_backward_works_under_bf16():
    x0 = _x(6, seed=2)
    ref, m = tiny_score_model(precision="fp32"), tiny_score_model(precision="bf16")
    assert m.training and not _is_channels_last(m)
    loss = m.training_loss(x0, torch.Generator().manual_seed(3))
    loss_ref = ref.training_loss(x0, torch.Generator().manual_seed(3))
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
    assert loss != loss_ref and abs(loss.item() / loss_ref.item() - 1) < 1e-2
    loss.backward()
    loss_ref.backward()
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    g = torch.cat([p.grad.flatten() for p in m.parameters()])
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters()])
    assert _rel(g, g_ref) < 3e-2
    assert all(p.dtype == torch.float32 for p in m.parameters())   # weights stay float32
    # one optimiser step changes the weights and the loss stays reproducible
    torch.optim.SGD(m.parameters(), lr=1e-2).step()
    l1 = m.training_loss(x0, torch.Generator().manual_seed(4))
    l2 = m.training_loss(x0, torch.Generator().manual_seed(4))
    assert torch.equal(l1, l2)


# ----------------------------------------------------------------------- saving and loading
def test_save_load_round_trip_after_bf16_channels_last_use(tmp_path):
    fresh = tiny_score_model(precision="fp32")
    used = tiny_score_model(precision="bf16").eval()
    with torch.no_grad():
        used(_x(2), torch.tensor([0.5, 1.0]))          # weights now channels-last
    assert _is_channels_last(used)
    a, b = save_model(tmp_path / "fresh", fresh), save_model(tmp_path / "used", used)
    # the same bytes: the memory format of the weights does not leak into the file
    assert (a / WEIGHTS_FILE).read_bytes() == (b / WEIGHTS_FILE).read_bytes()
    assert _is_channels_last(used)                      # saving does not change the model
    for precision in ("fp32", "bf16", "auto"):
        loaded = load_model(b, precision=precision)    # verifies the sha256 of the weights
        assert loaded.precision == precision and not loaded.training
        assert all(p.is_contiguous() for p in loaded.parameters())
        assert all(torch.equal(p, q) for p, q in zip(loaded.state_dict().values(),
                                                      fresh.state_dict().values()))
    assert load_model(b).precision == "auto"
    h = hashlib.sha256((b / WEIGHTS_FILE).read_bytes()).hexdigest()
    import json
    assert json.loads((b / "config.json").read_text())["weights"]["sha256"] == h
    # loading into the used (channels-last) model keeps its numbers
    used.load_state_dict(fresh.state_dict())
    used.precision = "fp32"
    x, s = _x(2), torch.tensor([0.5, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(used(x, s), fresh.eval()(x, s), rtol=1e-5, atol=1e-5)


def test_loaders_pass_the_precision_on(tmp_path):
    from sirf_diffusion.diffusion.loading import load_denoiser, load_slice_prior

    prior = tmp_path / "prior"
    save_model(prior / "xy", tiny_score_model())
    shutil.copytree(prior / "xy", prior / "yz")
    assert load_slice_prior(prior, "xy", "fp32").precision == "fp32"
    assert load_slice_prior(prior, "yz").precision == "auto"
    assert load_denoiser(prior, 1, "bf16").precision == "bf16"
    p3 = load_denoiser(prior, 4, "fp32")
    assert {m.precision for m in p3.models.values()} == {"fp32"}
    with pytest.raises(ValueError, match="precision must be one of"):
        load_slice_prior(prior, "xy", "fp16")


# ------------------------------------------------- differentiating through a bf16 network
def _prior(model, sigma=0.4, beta=0.7, scale=1.3):
    from sirf_diffusion.integrations.prior import DiffusionPrior

    return DiffusionPrior(model, sigma, beta, normalisation=scale)


def test_hessian_vector_product_through_a_bf16_model():
    """``DiffusionPrior.multiply_with_Hessian`` (a ``torch.func.jvp`` through the network) with
    a bf16 model that already ran in channels-last: it runs, returns float32, and equals the
    float32 model's product (the jvp runs the network in float32, contiguous), which matches
    central finite differences of the float64 gradient."""
    g = torch.Generator().manual_seed(5)
    u = 1.0 + torch.rand(1, 16, 16, generator=g)
    v = torch.randn(1, 16, 16, generator=g)
    model = tiny_score_model(seed=3, precision="bf16").eval()
    prior = _prior(model)
    grad = prior.get_gradient(u)                   # a bf16, channels-last network pass
    assert grad.dtype == torch.float32 and _is_channels_last(model)
    hv = prior.multiply_with_Hessian(u, v)
    assert hv.dtype == torch.float32 and hv.shape == u.shape and torch.isfinite(hv).all()
    assert _is_channels_last(model) and model.precision == "bf16"   # untouched by the jvp
    # after the jvp the model still runs bf16 channels-last passes
    with torch.no_grad():
        model(_x(1), torch.tensor([0.5]))

    ref_model = tiny_score_model(seed=3, precision="fp32").eval()
    hv_ref = _prior(ref_model).multiply_with_Hessian(u, v)
    torch.testing.assert_close(hv, hv_ref, rtol=1e-6, atol=1e-7)
    # fresh bf16 model (weights never converted) gives the same product
    torch.testing.assert_close(_prior(tiny_score_model(seed=3, precision="bf16").eval())
                               .multiply_with_Hessian(u, v), hv_ref, rtol=1e-6, atol=1e-7)

    m64 = tiny_score_model(seed=3, precision="fp32").double().eval()
    p64 = _prior(m64)
    u64, v64 = u.double(), v.double()
    h = 1e-5
    fd = (p64.get_gradient(u64 + h * v64) - p64.get_gradient(u64 - h * v64)) / (2 * h)
    torch.testing.assert_close(p64.multiply_with_Hessian(u64, v64), fd, rtol=1e-6, atol=1e-8)
    assert _rel(hv_ref.double(), fd) < 1e-4
    assert int((hv.abs() > 1e-6 * hv.abs().max()).sum()) > 1


def test_dps_gradient_through_a_bf16_model():
    """The DPS correction with a bf16 model in evaluation mode (channels-last, autocast) is
    the autograd gradient of the normalised misfit through that same model, in float32, and
    close to the float32 model's."""
    from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
    from sirf_diffusion.samplers.dps import PoissonDPSDC
    from sirf_diffusion.samplers.loop import StepContext

    lik, truth = poisson_problem(image_shape=(1, 16, 16), num_views=6, num_tangential=16,
                                 dtype=torch.float32)
    norm, zeta, sigma = IntensityNormalisation(2.0), 0.3, 0.5
    x = norm.to_prior(truth[None].float()) + 0.1 * _x(2, seed=7)
    s = torch.tensor(sigma)

    def correction(model):
        with torch.no_grad():
            x0 = model(x, s.expand(2))
        c = StepContext(0, 1, s, s * 0.5, x, model)
        return PoissonDPSDC(lik, norm, zeta)(x0, c) - x0, c.info

    bf16 = tiny_score_model(seed=2, precision="bf16").eval()
    corr, info = correction(bf16)
    assert corr.dtype == torch.float32 and torch.isfinite(corr).all()
    assert float(corr.abs().max()) > 0 and _is_channels_last(bf16)
    # oracle: autograd of KL(y || A(s max(D(x), 0)) + b) / KL through the same bf16 model
    xg = x.clone().requires_grad_(True)
    ybar = lik.physics.forward(norm.from_prior(torch.clamp(bf16(xg, s.expand(2)), min=0)))
    y = lik.data
    kl = (torch.where(y > 0, y * torch.log(y / ybar), 0.0) - y + ybar).sum((-3, -2, -1))
    (grad,) = torch.autograd.grad(kl.sum(), xg)
    expected = -zeta / kl.detach().reshape(-1, 1, 1, 1) * grad
    torch.testing.assert_close(corr, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    assert info["misfit"] == pytest.approx(kl.tolist(), rel=1e-4)
    corr_ref, _ = correction(tiny_score_model(seed=2, precision="fp32").eval())
    assert _rel(corr, corr_ref) < 5e-2


# ---------------------------------------------------------------------------- command line
@pytest.mark.parametrize("command", ["reconstruct", "sample", "train"])
def test_cli_precision_flag_parses(command):
    from sirf_diffusion.cli import build_parser

    head = [command, "case"] if command == "reconstruct" else [command]
    p = build_parser()
    assert p.parse_args([*head, "--out", "o.png"]).precision == (None if command == "train"
                                                                 else "auto")
    for value in ("auto", "fp32", "bf16"):
        assert p.parse_args([*head, "--out", "o.png", "--precision", value]).precision == value


@pytest.mark.parametrize("command", ["reconstruct", "sample", "train"])
def test_cli_bad_precision_exits_2(command, tmp_path, capsys):
    from sirf_diffusion.cli import main

    out = tmp_path / ("out.png" if command == "sample" else "out")
    head = ["reconstruct", str(tmp_path / "case")] if command == "reconstruct" else [command]
    assert main([*head, "--out", str(out), "--precision", "fp16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sirf-diffusion {command}: error: ")
    assert "argument --precision: invalid choice: 'fp16'" in err
    assert not out.exists()


def test_cli_sample_and_train_pass_the_precision_on(tmp_path, tiny_prior, monkeypatch):
    import json

    from sirf_diffusion.cli import main
    from sirf_diffusion.diffusion import loading, training

    seen: list[str] = []
    real = loading.load_slice_prior

    def spy(model_dir=None, orientation="xy", precision="auto"):
        seen.append(precision)
        return real(model_dir, orientation, precision)

    monkeypatch.setattr(loading, "load_slice_prior", spy)
    assert main(["sample", "--model", str(tiny_prior), "--out", str(tmp_path / "g.png"),
                 "--n", "1", "--steps", "2", "--precision", "fp32", "--no-progress"]) == 0
    assert seen == ["fp32"] and (tmp_path / "g.png").is_file()

    configs = []
    monkeypatch.setattr(training, "train", lambda cfg, *a, **k: configs.append(cfg))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"steps": 1, "precision": "fp32"}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "t1"),
                 "--no-progress"]) == 0
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "t2"),
                 "--precision", "bf16", "--no-progress"]) == 0
    assert [c.precision for c in configs] == ["fp32", "bf16"]   # the flag wins over the config


def test_cli_reconstruct_passes_the_precision_on(cli_case, tmp_path, tiny_prior, monkeypatch):
    from sirf_diffusion.cli import main
    from sirf_diffusion.diffusion import loading

    seen: list[str] = []
    real = loading.load_denoiser

    def spy(model_dir=None, num_slices=1, precision="auto"):
        seen.append(precision)
        return real(model_dir, num_slices, precision)

    monkeypatch.setattr(loading, "load_denoiser", spy)
    case = tmp_path / "case"
    shutil.copytree(cli_case, case)
    for value in ("bf16", "fp32"):
        assert main(["reconstruct", str(case), "--out", str(tmp_path / value), "--method",
                     "lisch", "--model", str(tiny_prior), "--steps", "2", "--samples", "1",
                     "--mlem-iterations", "2", "--precision", value, "--no-progress"]) == 0
    assert seen == ["bf16", "fp32"]
    assert Path(tmp_path / "fp32" / "image.hv").is_file()
