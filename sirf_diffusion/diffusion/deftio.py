"""PET-DEFT model folders: the h-network's weights and what it was trained for.

Layout (as :mod:`.modelio`'s score models: no pickle, nothing executed on load)::

    deft_dir/
        model.safetensors   # the h-network's (EMA) weights
        config.json         # format, HNetConfig, sha256 of the weights, the prior's weights
                            # fingerprint, geometry, dose range, normalisation recipe, training

A DEFT model is only meaningful with the prior it was trained against, on the geometry and the
dose range of its training pairs: :class:`DEFTModel` records all three, and
:mod:`sirf_diffusion.samplers.deft` refuses another prior or geometry and warns outside the
dose range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..io.weights import CONFIG_FILE, WEIGHTS_FILE, WeightsFolder
from .htransform import HNetConfig, HTransformNet

__all__ = ["DEFT_FORMAT", "DEFTModel", "save_deft_model", "load_deft_model"]

DEFT_FORMAT = "sirf-diffusion-deft-model/1"
_FOLDER = WeightsFolder(
    DEFT_FORMAT, "DEFT model", "not a DEFT model",
    config_hint=f" (a DEFT model folder holds {CONFIG_FILE} and {WEIGHTS_FILE})",
    format_hint="; a prior folder goes to --model, a DEFT model to --deft-model")


@dataclass
class DEFTModel:
    """An h-network and its conditions of use.

    Attributes
    ----------
    hnet
        The :class:`~.htransform.HTransformNet`.
    prior_fingerprint
        :func:`~.htransform.weights_fingerprint` of the prior it was trained against.
    geometry
        ``image_shape`` ``[z, y, x]``, ``voxel_size_mm``, ``data_shape`` (sinogram) and
        ``scanner`` of its training pairs.
    dose_range
        ``(low, high)`` counts/mm^3 of its training pairs.
    normalisation
        How the intensity scale is fitted (``init_subsets``, ``init_epochs`` of the OSEM image
        whose support mean it is): training and reconstruction must agree.
    extra
        Free metadata (training configuration, steps, wall time, where it ran).
    path
        The folder it was loaded from (``None`` when built in memory).
    """

    hnet: HTransformNet
    prior_fingerprint: str
    geometry: dict[str, Any]
    dose_range: tuple[float, float]
    normalisation: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def metadata(self) -> dict[str, Any]:
        """Everything of ``config.json`` but the weights section."""
        return {"format": DEFT_FORMAT, "hnet": self.hnet.config.to_dict(),
                "prior_fingerprint": self.prior_fingerprint, "geometry": self.geometry,
                "dose_range": [float(v) for v in self.dose_range],
                "normalisation": self.normalisation,
                "saved_by": {"package": "sirf-diffusion", "version": __version__},
                "extra": self.extra}


def save_deft_model(directory: str | os.PathLike[str], model: DEFTModel) -> Path:
    """Write ``model`` to ``directory`` (weights first, then ``config.json``, each atomically)."""
    weights = _FOLDER.encode(model.hnet.state_dict())
    meta = model.metadata()
    meta["weights"] = weights.record(num_parameters=model.hnet.num_parameters)
    return _FOLDER.save(directory, weights, meta, indent=1)


def load_deft_model(directory: str | os.PathLike[str], precision: str = "auto") -> DEFTModel:
    """Load a folder written by :func:`save_deft_model` (eval mode, float32 weights).

    Raises ``FileNotFoundError`` for a missing folder or file and ``ValueError`` naming the file
    for anything else (not a DEFT model, sha256 mismatch, names or shapes that do not fit).
    """
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    meta = _FOLDER.read_config(directory)
    sd = _FOLDER.read_weights(directory, meta)
    try:
        hcfg = dict(meta["hnet"])
        # models saved before the output scaling existed used DEFT's published form
        hcfg.setdefault("output_scaling", "none")
        hnet = HTransformNet(HNetConfig.from_dict(hcfg), precision=precision)
        hnet.load_state_dict(sd, strict=True)
        model = DEFTModel(hnet, str(meta["prior_fingerprint"]), dict(meta["geometry"]),
                          tuple(float(v) for v in meta["dose_range"]),  # type: ignore[arg-type]
                          dict(meta["normalisation"]), dict(meta.get("extra") or {}), directory)
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{cfg_path}: the DEFT model does not load ({e})") from e
    hnet.eval()
    return model
