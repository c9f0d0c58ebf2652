"""The command layer sits on top (issue 10, deliverable 5): only ``cli`` imports the commands, the
library never imports ``cli``, ``commands`` or ``workflows``, and the old names of
``workflows`` still work with a ``DeprecationWarning`` naming their new place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sirf_diffusion

PACKAGE = Path(sirf_diffusion.__file__).resolve().parent
COMMAND_LAYER = ("sirf_diffusion.cli", "sirf_diffusion.commands", "sirf_diffusion.workflows",
                 "sirf_diffusion.__main__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return found


def _in_layer(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in COMMAND_LAYER)


def test_the_library_never_imports_the_command_layer():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if _in_layer(module):
            continue
        bad = sorted(n for n in _imports(path) if _in_layer(n))
        if bad:
            offenders[module] = bad
    assert not offenders, offenders


def test_only_cli_imports_the_commands():
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module.startswith(("sirf_diffusion.commands", "sirf_diffusion.cli",
                              "sirf_diffusion.workflows")):
            continue
        assert not any(n.startswith("sirf_diffusion.commands") for n in _imports(path)), module


def test_importing_the_library_loads_no_command_module():
    code = ("import sys, sirf_diffusion, sirf_diffusion.demo, sirf_diffusion.diffusion, "
            "sirf_diffusion.integrations.sirf, sirf_diffusion.metrics; "
            "print([m for m in sys.modules if m.startswith(('sirf_diffusion.cli', "
            "'sirf_diffusion.commands', 'sirf_diffusion.workflows'))])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("name, new_place", [
    ("load_slice_prior", "sirf_diffusion.diffusion.loading.load_slice_prior"),
    ("load_denoiser", "sirf_diffusion.diffusion.loading.load_denoiser"),
    ("image_metrics", "sirf_diffusion.metrics.image_metrics"),
    ("write_json", "sirf_diffusion.io.atomic.write_json"),
    ("load_case", "sirf_diffusion.commands.case.load_case"),
    ("case_physics", "sirf_diffusion.commands.case.case_physics"),
    ("reconstruct_classical", "sirf_diffusion.commands.reconstruct.reconstruct_classical"),
    ("cmd_reconstruct", "sirf_diffusion.commands.reconstruct.run"),
])
def test_old_workflows_names_are_deprecated_aliases(name, new_place):
    import importlib

    from sirf_diffusion import workflows

    with pytest.warns(DeprecationWarning, match=new_place.replace(".", r"\.")):
        obj = getattr(workflows, name)
    module, attr = new_place.rsplit(".", 1)
    assert obj is getattr(importlib.import_module(module), attr)


def test_dps_default_zeta_alias_reads_method_defaults():
    from sirf_diffusion import workflows
    from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS

    with pytest.warns(DeprecationWarning, match="METHOD_DEFAULTS"):
        assert workflows.DPS_DEFAULT_ZETA == METHOD_DEFAULTS["dps"]["step_size"]
    with pytest.raises(AttributeError):
        workflows.no_such_name  # noqa: B018
