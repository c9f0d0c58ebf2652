"""``python -m sirf_diffusion`` runs the command-line interface."""

from .cli import main

raise SystemExit(main())
