"""Shared pytest fixtures and availability flags."""

from __future__ import annotations

from pathlib import Path

import os

# One intra-op thread: the tests use small tensors, for which a second thread mostly costs
# synchronisation (up to 15x slower on a loaded 2-core machine).  Set through OMP_NUM_THREADS
# before torch starts: calling torch.set_num_threads(1) instead makes STIR's OpenMP code (SIRF
# objective functions) crash in the same process (seen with torch 2.13 and STIR 6.5).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

#: Folder of reference files written by the real STIR (beside the repository; also in CI).
STIR_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stir-reference"


@pytest.fixture
def stir_reference() -> Path:
    """Path of ``../shared/data/stir-reference``; skips the test when it is absent."""
    if not (STIR_REFERENCE / "README.md").is_file():
        pytest.skip(f"STIR reference data not found at {STIR_REFERENCE}")
    return STIR_REFERENCE


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


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory) -> Path:
    """A prior folder (``xy``) with an untrained 2-level UNet of 8 channels: fast, any grid
    divisible by 2."""
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig, save_model

    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=()),
        orientation="xy", image_size=(16, 16)))
    folder = tmp_path_factory.mktemp("prior") / "tiny"
    save_model(folder / "xy", model)
    return folder
