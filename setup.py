"""Shim for tools that still call ``setup.py`` (SIRF's ``PYTHON_STRATEGY=SETUP_PY`` tradition,
older SuperBuild recipes); everything is declared in ``pyproject.toml``."""

from setuptools import setup

setup()
