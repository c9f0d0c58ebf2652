"""The CMake install (``CMakeLists.txt``), as SIRF installs its own Python modules.

Configures and installs into a temporary prefix, then imports both packages from another
directory with only ``<prefix>/python`` on ``PYTHONPATH`` and loads the shipped prior from
there; checks the installed file set, ``PYTHON_DEST_DIR``, ``PYTHON_STRATEGY`` validation and the
``ctest`` entry.  Skipped when ``cmake`` / ``ctest`` are not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sirf_diffusion", "stir_wrappers")

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None,
                                reason="cmake/ctest not installed")


def _run(*args: str, cwd: Path | None = None, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def _configure(build: Path, *options: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("cmake", "-S", str(ROOT), "-B", str(build),
                f"-DPython_EXECUTABLE={sys.executable}", *options, check=check)


def _expected_files() -> set[str]:
    """What the install must hold: every module and ``py.typed`` of both packages, and the
    shipped prior's weights and configuration."""
    out = set()
    for package in PACKAGES:
        for p in (ROOT / package).rglob("*"):
            if "__pycache__" in p.parts or not p.is_file():
                continue
            rel = p.relative_to(ROOT)
            if p.suffix == ".py" or p.name == "py.typed" or (
                    "models" in rel.parts and p.suffix in (".safetensors", ".json", ".md")):
                out.add(rel.as_posix())
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cmake")
    _configure(tmp / "build", f"-DCMAKE_INSTALL_PREFIX={tmp / 'prefix'}")
    _run("cmake", "--install", str(tmp / "build"))
    return tmp


def test_install_holds_the_packages_and_the_shipped_prior(installed):
    dest = installed / "prefix" / "python"
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert files == _expected_files()
    assert "sirf_diffusion/models/default/xy/model.safetensors" in files
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)


def test_installed_packages_import_from_the_prefix_and_load_the_prior(installed):
    dest = installed / "prefix" / "python"
    elsewhere = installed / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
    code = (
        "import json, sirf_diffusion, stir_wrappers\n"
        "from sirf_diffusion.diffusion import load_model\n"
        "from sirf_diffusion.models import default_prior_dir\n"
        "model = load_model(default_prior_dir() / 'xy')\n"
        "print(json.dumps({'sirf_diffusion': sirf_diffusion.__file__,\n"
        "                  'stir_wrappers': stir_wrappers.__file__,\n"
        "                  'prior': str(default_prior_dir()),\n"
        "                  'parameters': sum(p.numel() for p in model.parameters())}))\n"
    )
    res = _run(sys.executable, "-c", code, cwd=elsewhere, env=env)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("sirf_diffusion", "stir_wrappers", "prior"):
        assert Path(info[key]).resolve().is_relative_to(dest.resolve()), (key, info[key])
    assert info["parameters"] > 0


def test_ctest_runs_the_suite_with_toolkits_required(installed):
    res = _run("ctest", "--show-only=json-v1", cwd=installed / "build")
    tests = json.loads(res.stdout)["tests"]
    assert [t["name"] for t in tests] == ["sirf_diffusion_pytest"]
    command = tests[0]["command"]
    assert command[1:3] == ["-m", "pytest"] and command[-1] == str(ROOT / "tests")
    props = {p["name"]: p["value"] for p in tests[0]["properties"]}
    assert "SIRF_DIFFUSION_REQUIRE_TOOLKITS=1" in props["ENVIRONMENT"]
    assert Path(props["WORKING_DIRECTORY"]).resolve() == ROOT
    assert "sirf_diffusion_pytest" in _run("ctest", "-N", cwd=installed / "build").stdout


def test_python_dest_dir_and_strategy(tmp_path):
    dest = tmp_path / "site"
    _configure(tmp_path / "build", f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'prefix'}",
               f"-DPYTHON_DEST_DIR={dest}")
    _run("cmake", "--install", str(tmp_path / "build"))
    assert (dest / "sirf_diffusion" / "__init__.py").is_file()
    assert (dest / "stir_wrappers" / "__init__.py").is_file()
    assert not (tmp_path / "prefix" / "python").exists()
    res = _configure(tmp_path / "bad", "-DPYTHON_STRATEGY=CONDA", check=False)
    assert res.returncode != 0 and "PYTHON_STRATEGY must be PYTHONPATH or SETUP_PY" in res.stderr
