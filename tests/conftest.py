"""Shared pytest fixtures and availability flags."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

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


@pytest.fixture
def stir_reference() -> Path:
    """``tests/data/third_party/stir-reference``: the 2D STIR reference files (tracked; never skipped)."""
    if not (STIR_REFERENCE / "README.md").is_file():
        pytest.fail(f"{STIR_REFERENCE} is missing: it is part of the repository")
    return STIR_REFERENCE


@pytest.fixture
def stir_reference_path() -> Callable[[str], Path]:
    """``name -> path`` of a STIR reference file: ``tests/data/third_party/stir-reference`` first, then the
    3D folder (:func:`stir_reference_3d_folder`); skips the test when neither holds it."""
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
