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
