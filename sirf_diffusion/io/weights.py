"""Weight folders: ``model.safetensors`` + ``config.json`` with the weights' sha256.

Every trained network of the package (the slice prior's score models,
:mod:`sirf_diffusion.diffusion.modelio`; PET-DEFT's h-network,
:mod:`sirf_diffusion.diffusion.deftio`; FBSEM-net, :mod:`sirf_diffusion.recon.fbsem`) is stored
the same way::

    folder/
        model.safetensors   # weights only (no pickle: nothing is executed on load)
        config.json         # a format tag, the network's configuration, and a "weights" section
                            # {"file", "sha256", ..., "num_tensors"}

Both files are written atomically with the user's umask
(:func:`~sirf_diffusion.io.atomic.atomic_write_bytes`), weights first, so an interrupted save
never leaves a config that validates against other weights.  Reading refuses, with one message
naming the file: a missing folder or file (``FileNotFoundError``), a config that is not JSON, has
another format tag or lacks a section, weights whose sha256 differs from the config's, and a
weights file safetensors cannot read (``ValueError``).

A :class:`WeightsFolder` describes one kind of folder (its format tag and the words its messages
use); the model modules build their configuration and network around it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes, atomic_write_text, make_dir

__all__ = ["WEIGHTS_FILE", "CONFIG_FILE", "EncodedWeights", "WeightsFolder", "encode_weights",
           "check_tensor_fit"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class EncodedWeights:
    """A state dict serialised by safetensors, with its sha256 and number of tensors."""

    blob: bytes
    sha256: str
    num_tensors: int

    def record(self, **fields: Any) -> dict[str, Any]:
        """The ``weights`` section of ``config.json``: ``file``, ``sha256``, then ``fields``
        (e.g. ``dtype``, ``num_parameters``) in their order, then ``num_tensors``."""
        return {"file": WEIGHTS_FILE, "sha256": self.sha256, **fields,
                "num_tensors": self.num_tensors}


def encode_weights(state_dict: Mapping[str, torch.Tensor], format_tag: str,
                   dtype: torch.dtype = torch.float32) -> EncodedWeights:
    """Serialise ``state_dict`` with safetensors (floating-point tensors stored as ``dtype``, on
    the CPU; ``format_tag`` in the file's metadata)."""
    from safetensors.torch import save

    sd = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
          for k, v in state_dict.items()}
    blob = save(sd, metadata={"format": format_tag})
    return EncodedWeights(blob, hashlib.sha256(blob).hexdigest(), len(sd))


@dataclass(frozen=True)
class WeightsFolder:
    """One kind of weight folder.

    Attributes
    ----------
    format
        The format tag in ``config.json`` (and in the safetensors metadata).
    kind
        What its messages call it, e.g. ``'DEFT model'``.
    wrong_format
        The message for a config with another format tag, e.g. ``'not a DEFT model'``.
    folder_word
        ``'folder'`` or ``'directory'`` in the message of a missing folder.
    sections
        Sections ``config.json`` must hold as objects (``weights`` is always required).
    config_hint, format_hint
        Appended to the message of a missing config (e.g. how to make one) and inside the
        parentheses of a wrong format tag (e.g. where such a folder goes instead).
    """

    format: str
    kind: str
    wrong_format: str
    folder_word: str = "folder"
    sections: tuple[str, ...] = ()
    config_hint: str = ""
    format_hint: str = ""

    # ---------------------------------------------------------------------------- writing
    def encode(self, state_dict: Mapping[str, torch.Tensor],
               dtype: torch.dtype = torch.float32) -> EncodedWeights:
        """:func:`encode_weights` with this folder's format tag."""
        return encode_weights(state_dict, self.format, dtype)

    def save(self, directory: str | os.PathLike[str], weights: EncodedWeights,
             meta: dict[str, Any], indent: int = 2) -> Path:
        """Write ``weights`` and ``meta`` (which records ``weights.record(...)``) to
        ``directory`` (created); ``ValueError`` when ``meta`` is not JSON-serialisable."""
        try:
            text = json.dumps(meta, indent=indent, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.kind} metadata is not JSON-serialisable: {e}") from e
        directory = make_dir(Path(directory))
        atomic_write_bytes(directory / WEIGHTS_FILE, weights.blob)
        atomic_write_text(directory / CONFIG_FILE, text + "\n")
        return directory

    # ---------------------------------------------------------------------------- reading
    def read_config(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """The checked ``config.json`` of ``directory``."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: {self.kind} {self.folder_word} not found")
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {self.kind} config file not found{self.config_hint}")
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != self.format:
            raise ValueError(f"{path}: {self.wrong_format} (expected format "
                             f"{self.format!r}{self.format_hint})")
        for key in (*self.sections, "weights"):
            if not isinstance(meta.get(key), dict):
                raise ValueError(f"{path}: missing the {key!r} section")
        return meta

    @staticmethod
    def weights_path(directory: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
        """The weights file that ``meta`` (a :meth:`read_config`) names in ``directory``."""
        return Path(directory) / str(meta["weights"].get("file", WEIGHTS_FILE))

    def read_weights(self, directory: str | os.PathLike[str],
                     meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The tensors of ``directory`` whose sha256 ``meta`` (its :meth:`read_config`) records."""
        from safetensors.torch import load

        w = meta["weights"]
        w_path = self.weights_path(directory, meta)
        if not w_path.is_file():
            raise FileNotFoundError(f"{w_path}: weights file not found{self.config_hint}")
        blob = w_path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != w.get("sha256"):
            raise ValueError(f"{w_path}: sha256 mismatch (file {digest[:12]}..., {CONFIG_FILE} "
                             f"says {str(w.get('sha256'))[:12]}...): the weights file is corrupt, "
                             "truncated or was modified")
        try:
            return load(blob)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{w_path}: not a readable safetensors file ({e})") from None


def check_tensor_fit(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                     weights_path: Path, config_path: Path) -> None:
    """Refuse ``tensors`` whose names or shapes differ from the ``reference`` state dict of the
    network ``config_path`` configures (``ValueError`` naming both files and the first five
    differences of each kind)."""
    missing = sorted(set(reference) - set(tensors))
    unexpected = sorted(set(tensors) - set(reference))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs network {tuple(v.shape)}"
              for k, v in reference.items()
              if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    problems = []
    if missing or unexpected:
        problems.append(f"tensor names differ: missing {missing[:5]}"
                        f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                        f"{'...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append("tensor shapes differ: " + "; ".join(shapes[:5]))
    if problems:
        raise ValueError(f"{weights_path}: tensors do not fit the network in {config_path} "
                         f"({'; '.join(problems)})")
