"""Default operating points of the diffusion reconstruction methods: the one table.

Every front end (``reconstruct``, the CIL algorithms, the SIRF reconstructor, the command line
and its ``--help``) reads its defaults from :data:`METHOD_DEFAULTS`, so they cannot drift apart.
Each value is the best operating point the project's own studies found on held-out simulated
brains (2.5 and 10 counts/mm^3, mMR 2D geometry, the shipped prior); the study is cited beside
it.  Rerun the study before changing a value.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["METHOD_DEFAULTS", "STEER_LAYERS", "defaults_for"]

#: Values of ``steer_layers`` (samplers/steer.py): LoRA on every layer of the residual and
#: attention blocks (the CT code's), or only on those at the UNet's coarsest resolution
#: (:func:`~sirf_diffusion.diffusion.lora.lowest_resolution_layers`)
STEER_LAYERS: tuple[str, ...] = ("all", "deepest")

# Steerable conditional diffusion (samplers/steer.py), off by default.  When on: the best of
# the settings tried on validation subjects 1 and 11 (amyloid, 2.5 and 10 counts/mm^3,
# docs/steering.md sections 4.1 and 5.2): learning rate 1e-3 with AdamW weight decay 50 (5 %
# shrink per Adam step), mean NRMSE 0.1975 over both subjects at 2.5 (PET-LiSch 0.1976, the
# earlier lr 1e-4 without decay 0.1998); the deepest layers only, Morozov stopping, stronger or
# late-only fits were 0.003-0.065 worse; a blurred misfit gradient (steer_smoothing_mm, 8 or 16
# mm, section 6) was 0.007-0.009 worse without decay and level with it.  No setting beat
# PET-LiSch by more than the noise
_STEER: Mapping[str, Any] = MappingProxyType({
    "steer": False, "steer_rank": 4, "steer_steps": 2, "steer_adam_steps": 8, "steer_lr": 1e-3,
    "steer_layers": "all", "steer_weight_decay": 50.0, "steer_discrepancy": None,
    "steer_smoothing_mm": None})

METHOD_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    # docs/evaluation/speed_accuracy: 15-20 steps with K 30 gave LiSch's lowest NRMSE at
    # 2.5 counts/mm^3 (0.2244-0.2246); 4-chain means: README demo (0.218 vs OSEM 0.259)
    "lisch": MappingProxyType({"num_steps": 20, "num_mlem_iterations": 30, "num_samples": 4,
                               "eta": 0.0, "alpha": 1.0, "max_likelihood_steps": 20,
                               **_STEER}),
    # docs/evaluation/speed_accuracy: PET-DDS's best NRMSE at 30 steps, one epoch of 4 subsets
    # per step (0.2274 with beta 0, 0.2262 with a relative beta of 0.1: within noise; a
    # physical beta depends on the data's scale, so the default is 0)
    "dds": MappingProxyType({"num_steps": 30, "beta": 0.0, "num_subsets": 4, "num_samples": 4,
                             "eta": 0.0, "init_subsets": 1, "init_epochs": 10, **_STEER}),
    # docs/evaluation/dps_zeta_sweep: zeta 2000 (0.255) vs 3000 (0.254) within noise
    "dps": MappingProxyType({"num_steps": 50, "step_size": 2000.0, "num_samples": 1,
                             "eta": 0.0, "step_normalisation": "misfit", "init_subsets": 1,
                             "init_epochs": 10}),
    # PET-DEFT (docs/deft.md): 5 steps as the paper's fastest setting; t_start 0.9 was the best
    # first noise level of 1 / 0.9 / 0.8 / 0.7 on every validation subject and dose (0.5,
    # 2.5, 10); its normalisation recipe comes from the DEFT model, not from this table
    "deft": MappingProxyType({"num_steps": 5, "num_samples": 4, "eta": 0.0, "t_start": 0.9}),
})


def defaults_for(method: str) -> dict[str, Any]:
    """A copy of the defaults of ``method`` (``'lisch'``, ``'dds'``, ``'dps'`` or ``'deft'``)."""
    if method not in METHOD_DEFAULTS:
        raise ValueError(f"method must be one of {tuple(METHOD_DEFAULTS)}, got {method!r}")
    return dict(METHOD_DEFAULTS[method])
