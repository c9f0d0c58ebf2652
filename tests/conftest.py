"""Shared pytest fixtures and availability flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread: the tests use small tensors, for which a second thread mostly costs
# synchronisation (up to 15x slower on a loaded 2-core machine).
torch.set_num_threads(1)

#: Folder of reference files written by the real STIR (beside the repository; also in CI).
STIR_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stir-reference"


@pytest.fixture
def stir_reference() -> Path:
    """Path of ``../shared/data/stir-reference``; skips the test when it is absent."""
    if not (STIR_REFERENCE / "README.md").is_file():
        pytest.skip(f"STIR reference data not found at {STIR_REFERENCE}")
    return STIR_REFERENCE
