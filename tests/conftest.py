"""Shared pytest fixtures, availability flags and test helpers.

Helpers (import them with ``from conftest import ...``): :class:`GaussianDenoiser` (the exact
Tweedie denoiser of a Gaussian prior, an analytic oracle), :func:`prior_layout`,
:func:`gaussian_denoiser`, :func:`poisson_problem` (a small dense Poisson problem),
:func:`randomise_parameters`, :func:`tiny_score_model` (a tiny slice model with non-zero
weights), :func:`tiny_orientation_model`, :func:`simulated_case_with_osem` and
:func:`simulated_3d_case` (case folders for the toolkit tests), :func:`load_script`;
fixtures:
``one_thread``, ``one_thread_module``, ``fake_cil`` (:mod:`fake_cil` installed as ``cil``),
``stir_reference``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# One intra-op thread: the tests use small tensors, for which a second thread mostly costs
# synchronisation (up to 15x slower on a loaded 2-core machine).  Set through OMP_NUM_THREADS
# before torch starts: calling torch.set_num_threads(1) instead makes STIR's OpenMP code (SIRF
# objective functions) crash in the same process (seen with torch 2.13 and STIR 6.5).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

#: The small (2D) reference files written by the real STIR, shipped with the tests.
STIR_REFERENCE = Path(__file__).resolve().parent / "data" / "third_party" / "stir-reference"
#: Environment variable naming the folder of the large (3D, ``brain3d*``) STIR reference files,
#: which are not in the repository; by default ``../shared/data/stir-reference`` beside it.
STIR_REFERENCE_3D_ENV = "SIRF_DIFFUSION_STIR_REFERENCE_3D"


def stir_reference_3d_folder() -> Path:
    """Folder of the optional 3D reference files (``$SIRF_DIFFUSION_STIR_REFERENCE_3D``)."""
    env = os.environ.get(STIR_REFERENCE_3D_ENV, "").strip()
    return (Path(env) if env else
            Path(__file__).resolve().parents[2] / "shared" / "data" / "stir-reference")


@functools.lru_cache(maxsize=None)
def _readme_json(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    m = re.search(r"<!-- BEGIN JSON -->\s*```json\s*(.*?)```\s*<!-- END JSON -->", text, re.S)
    assert m, f"{folder / 'README.md'} has no machine-readable JSON section"
    return json.loads(m.group(1))

DT = torch.float64


@pytest.fixture
def stir_reference() -> Path:
    """``tests/data/third_party/stir-reference``: the 2D STIR reference files (tracked)."""
    if not (STIR_REFERENCE / "README.md").is_file():
        pytest.fail(f"{STIR_REFERENCE} is missing: it is part of the repository")
    return STIR_REFERENCE


@pytest.fixture
def stir_reference_path() -> Callable[[str], Path]:
    """``name -> path`` of a STIR reference file: ``tests/data/third_party/stir-reference``
    first, then the 3D folder (:func:`stir_reference_3d_folder`); skips the test when neither
    holds it."""
    def find(name: str) -> Path:
        for folder in (STIR_REFERENCE, stir_reference_3d_folder()):
            if (folder / name).is_file():
                return folder / name
        pytest.skip(f"STIR reference file {name} not found in {STIR_REFERENCE} or "
                    f"{stir_reference_3d_folder()} (set {STIR_REFERENCE_3D_ENV})")
    return find


@pytest.fixture
def stir_reference_json(stir_reference_path) -> Callable[[str], dict]:
    """``name -> dict``: the machine-readable JSON of the README beside reference file ``name``."""
    return lambda name: _readme_json(stir_reference_path(name).parent)


@contextlib.contextmanager
def _one_torch_thread():
    """Run the block with one torch intra-op thread, restoring the count after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny dense problems: threads only add synchronisation).
    Not for toolkit tests (see the OMP_NUM_THREADS note above)."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """:func:`one_thread` for a whole module, module-scoped fixtures included (modules that
    build or train tiny models in module fixtures); use with
    ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    with _one_torch_thread():
        yield


@pytest.fixture
def fake_cil():
    """``tests/fake_cil.py`` installed as the ``cil`` package for the test, with
    ``sirf_diffusion.integrations.cil`` imported against it; both undone afterwards."""
    import fake_cil as fc

    import sirf_diffusion.integrations as integrations

    name = "sirf_diffusion.integrations.cil"
    saved = {m: sys.modules.get(m) for m in (*fc.MODULES, name)}
    had_attr = "cil" in vars(integrations)
    old_attr = vars(integrations).get("cil")
    sys.modules.update(fc.MODULES)
    sys.modules.pop(name, None)
    vars(integrations).pop("cil", None)
    try:
        import sirf_diffusion.integrations.cil as module

        yield module
    finally:
        for m, old in saved.items():
            if old is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = old
        vars(integrations).pop("cil", None)
        if had_attr:
            vars(integrations)["cil"] = old_attr


# ----------------------------------------------------------------------------- helpers
class GaussianDenoiser:
    """Exact Tweedie estimate for ``x0 ~ N(mu, var)`` (elementwise):
    ``mu + var / (var + sigma^2) (x - mu)``; counts its calls."""

    def __init__(self, mu, var):
        self.mu, self.var = mu, var
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return self.mu + self.var / (self.var + s2) * (x - self.mu)


def prior_layout(a: torch.Tensor) -> torch.Tensor:
    """``(z, y, x)`` -> the normalisation's prior layout for one image."""
    return a[None] if a.shape[0] == 1 else a[None, None]


def gaussian_denoiser(shape=(1, 4, 4), mu=1.0, var=0.3, dtype=torch.float32) -> GaussianDenoiser:
    """The Gaussian denoiser of a constant prior ``N(mu, var)`` on images of ``shape``."""
    return GaussianDenoiser(prior_layout(torch.full(shape, mu, dtype=dtype)),
                            prior_layout(torch.full(shape, var, dtype=dtype)))


def poisson_problem(image_shape=(1, 4, 4), num_views=8, num_tangential=6, seed=0, dtype=DT,
                    density=0.4):
    """A small dense Poisson problem: ``(PoissonLogLikelihood, truth)``.

    The system matrix (``density`` of its entries non-zero), the truth (in ``[1, 3]``) and the
    data are drawn in float64 from ``seed``; the physics and data have ``dtype``; the additive
    term is 0.5 in every bin.
    """
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.physics.base import DenseMatrixPhysics

    g = torch.Generator().manual_seed(seed)
    data_shape = (image_shape[0], num_views, num_tangential)
    A = torch.rand(math.prod(data_shape), math.prod(image_shape), generator=g, dtype=DT)
    A = A * (torch.rand(A.shape, generator=g, dtype=DT) < density)
    truth = 1 + 2 * torch.rand(image_shape, generator=g, dtype=DT)
    phys = DenseMatrixPhysics(A.to(dtype), image_shape, data_shape,
                              additive=torch.full(data_shape, 0.5, dtype=dtype))
    y = torch.poisson(phys.forward(truth.to(dtype)), generator=g)
    return PoissonLogLikelihood(phys, y), truth


def randomise_parameters(module: torch.nn.Module, seed: int = 0, scale: float = 0.1
                         ) -> torch.nn.Module:
    """Overwrite every parameter of ``module`` with ``scale * N(0, 1)`` draws from ``seed`` (the
    zero-initialised output layers included, so that a network's output is not 0); returns it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def tiny_score_model(seed: int = 0, precision: str = "auto", parametrisation: str = "eps",
                     image_size: tuple[int, int] = (16, 16), schedule: dict | None = None,
                     channels_last: bool | None = None, trained: bool = True):
    """A 2-level, 8-channel :class:`~sirf_diffusion.diffusion.model.ScoreModel` (attention at
    the coarse level) in training mode; ``trained``: random non-zero weights
    (:func:`randomise_parameters`), else the fresh network (zero output layer)."""
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig

    extra = {} if schedule is None else {"schedule": schedule}
    model = ScoreModel(ScoreModelConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), groupnorm_groups=4),
        image_size=image_size, parametrisation=parametrisation, **extra),
        precision=precision, channels_last=channels_last)
    return randomise_parameters(model, seed) if trained else model


def load_script(path: Path) -> ModuleType:
    """Import a script that is not in a package (``benchmarks/*.py``, ``examples/*.py``) as the
    module ``_script_<folder>_<name>``, once per session."""
    mod_name = f"_script_{path.parent.name}_{path.stem}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def simulated_3d_case(folder: Path, seed: int, *, num_tangential: int = 64) -> Path:
    """A small fully 3D mMR case with oblique segments for the toolkit tests, written in the
    PETRIC layout to ``folder`` with a 2-epoch, 4-subset OSEM image as ``OSEM_image.hv``.

    4 rings with ring differences up to 2 (span 1: segments 0, +-1, +-2, 14 sinograms), 7
    planes of half the ring spacing, 34 x 34 voxels of 2.09 mm, all 252 views (STIR keeps its
    projector symmetries only without view mashing), 2.5 counts/mm^3, subject ``seed``.  Only the
    central ``num_tangential`` of the 344 tangential bins are kept: they cover the 71 mm field
    of view (64 bins reach 66 mm), and the toolkits' projections cost less.  34 (not 32)
    voxels: with 32, the cylindrical field of view of STIR's ray tracer (15 voxels) ends the
    central ray of the 30, 60 and 150 degree views exactly on a voxel boundary, a tie that STIR
    (float32) and the embedded tracer (float64) break differently.
    """
    from dataclasses import replace

    from sirf_diffusion import PoissonLogLikelihood, osem
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan, write_simulated_case
    from sirf_diffusion.physics.geometry import SinogramGeometry

    scan = simulate_scan(SimulationConfig(seed=seed, dims=3, counts_per_mm3=2.5, rings=4,
                                          max_ring_difference=2, num_planes=7,
                                          image_shape=(34, 34), num_views=252), progress=False)
    g = scan.sinogram_geometry
    first = int(g.num_tangential) // 2 - num_tangential // 2
    keep = slice(first, first + num_tangential)
    cropped = SinogramGeometry(g.scanner, g.num_views, num_tangential, g.arc_corrected, g.span,
                               g.max_ring_difference)
    assert (cropped.tangential_indices() == g.tangential_indices()[keep]).all()
    scan = replace(scan, sinogram_geometry=cropped,
                   **{k: getattr(scan, k)[..., keep].contiguous()
                      for k in ("prompts", "multiplicative", "additive")})
    lik = PoissonLogLikelihood(scan.acquisition_model(num_subsets=4), scan.prompts)
    x = osem(lik, num_subsets=4, num_epochs=2, progress=False)
    return write_simulated_case(folder, scan, osem_image=x)


def simulated_case_with_osem(folder: Path, seed: int) -> Path:
    """A simulated 2D mMR case (2.5 counts/mm^3, random ``seed``) written in the PETRIC layout to
    ``folder`` with a 2-epoch, 4-subset OSEM image as ``OSEM_image.hv`` (toolkit tests)."""
    from sirf_diffusion import PoissonLogLikelihood, osem
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan, write_simulated_case

    scan = simulate_scan(SimulationConfig(seed=seed, counts_per_mm3=2.5), progress=False)
    lik = PoissonLogLikelihood(scan.acquisition_model(num_subsets=4), scan.prompts)
    x = osem(lik, num_subsets=4, num_epochs=2, progress=False)
    return write_simulated_case(folder, scan, osem_image=x)


# ------------------------------------------------------------------------- command line
@pytest.fixture(scope="session")
def cli_case(tmp_path_factory) -> Path:
    """A simulated 2D FDG case (mMR, 128 x 128, test subject 3's seed), written once per session
    by ``sirf-diffusion simulate``; tests copy it before changing it."""
    from sirf_diffusion.cli import main

    folder = tmp_path_factory.mktemp("cli") / "case"
    assert main(["simulate", "--out", str(folder), "--seed", "3", "--counts", "2.5",
                 "--no-progress"]) == 0
    return folder


def tiny_orientation_model(orientation: str = "xy", weights_seed: int | None = None):
    """A 2-level UNet of 8 channels for ``orientation``: fast, any grid divisible by 2.

    Untrained (``weights_seed=None``), its zero-initialised output layer makes it the identity
    ``D(x, sigma) = x``; with a seed every weight is drawn as ``0.2 N(0, 1)``, so that models of
    different seeds denoise differently.
    """
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig

    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=()),
        orientation=orientation, image_size=(16, 16)))
    if weights_seed is not None:
        randomise_parameters(model, weights_seed, scale=0.2)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory) -> Path:
    """A prior folder (``xy``) with an untrained :func:`tiny_orientation_model`."""
    from sirf_diffusion.diffusion import save_model

    folder = tmp_path_factory.mktemp("prior") / "tiny"
    save_model(folder / "xy", tiny_orientation_model("xy"))
    return folder


@pytest.fixture(scope="session")
def tiny_random_prior_3d(tmp_path_factory) -> Path:
    """A prior folder with all three orientations (``xy``, ``yz``, ``xz``), each a
    :func:`tiny_orientation_model` with its own random weights (seeds 0, 1, 2)."""
    from sirf_diffusion.diffusion import save_prior

    folder = tmp_path_factory.mktemp("prior") / "tiny3d"
    return save_prior(folder, {o: tiny_orientation_model(o, weights_seed=i)
                               for i, o in enumerate(("xy", "yz", "xz"))})


@pytest.fixture(scope="session")
def cli_case_3d(tmp_path_factory) -> Path:
    """A simulated 3D FDG case (``simulate --dims 3 --rings 2``: 3 planes of 128 x 128, ring
    differences up to 1, test subject 10), written once per session; tests must not change it."""
    from sirf_diffusion.cli import main

    folder = tmp_path_factory.mktemp("cli3d") / "case"
    assert main(["simulate", "--dims", "3", "--rings", "2", "--seed", "10", "--out", str(folder),
                 "--no-progress"]) == 0
    return folder


@pytest.fixture(scope="session")
def tiny_prior_3d(tmp_path_factory) -> Path:
    """A prior folder with ``xy``, ``yz`` and ``xz`` untrained 3-level UNets of 8 channels (the
    perpendicular 3D prior; any grid, padded to a multiple of 4; the middle block's attention at
    a quarter of the resolution keeps 128 x 128 slices cheap)."""
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig, save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("prior3d") / "tiny"
    for orientation in ("xy", "yz", "xz"):
        model = ScoreModel(ScoreModelConfig(
            unet=UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                            attention_resolutions=()),
            orientation=orientation, image_size=(16, 16)))
        save_model(folder / orientation, model)
    return folder
