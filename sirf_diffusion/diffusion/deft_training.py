"""Training the PET-DEFT h-network on paired data, resumable bit for bit.

The loss (Denker et al. 2024, Eq. 10; Webber et al. 2025) is the conditional denoising loss
with only the h-network trainable:

.. math::

    \\mathcal L(\\phi) = \\mathbb E_{t, (x_0, y), \\epsilon} \\big\\|\\epsilon
    - \\epsilon_\\theta(x_t, t) - \\epsilon_{h,\\phi}(x_t, \\hat x_0, g(y, \\hat x_0), t)\\big\\|^2,
    \\qquad x_t = \\sqrt{\\bar\\alpha_t} x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\epsilon,

``t ~ U(t_min, 1)`` (the prior's continuous VP schedule and ``t_min``), ``x_0`` a ground-truth
slice in the prior's units, ``y`` its simulated scan (:mod:`sirf_diffusion.data.pairs`),
``eps_theta`` the frozen prior's noise estimate and ``x0_hat`` its Tweedie estimate
(:func:`deft_loss`; :mod:`.htransform` defines ``eps_h`` and ``g``); with the h-network's
``'edm'`` output scaling each term is weighted by ``1 / kappa(sigma)^2``, EDM's loss weight
(Karras et al. 2022; :func:`~.htransform.output_scale`, docs/deft.md).  Each pair is normalised
as a reconstruction will be: by the support mean of a short OSEM image of its own data
(:func:`~.htransform.fit_normalisation`).

The loop reuses the prior trainer's pieces (:mod:`.training`, :mod:`.checkpointing`,
:mod:`.ema`): AdamW with warm-up and optional cosine decay, gradient clipping, EMA, checkpoints
with checksums, loss CSVs, and counter-based randomness (the pairs of step ``k`` are examples
``k B ... (k + 1) B - 1`` of a seeded :class:`~sirf_diffusion.data.pairs.PairedDataset`; the
times and noise come from ``(seed, k)``), so a resumed run reproduces the uninterrupted one bit
for bit (same device and thread count).  A run folder holding checkpoints is continued only
with ``resume`` and replaced only with ``overwrite``.

Run folder: ``train_config.json``, ``loss.csv``, ``val_loss.csv``, ``loss.png``,
``checkpoints/step_XXXXXXXX.pt``, and ``model/`` (the EMA h-network,
:func:`~.deftio.save_deft_model`), refreshed at every checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..io.atomic import make_dir, write_json
from ..io.config import dataclass_from_dict
from ..training_loop import StepStats, TrainingLoop, check_counts, check_optimiser_fields
from .checkpointing import (
    _CKPT_FORMAT,
    _delete_checkpoint,
    _load_latest,
    _save_checkpoint,
    check_run_folder,
    new_run_id,
    plot_loss,
)
from .datasets import derive_seed
from .deftio import DEFTModel, save_deft_model
from .ema import EMA
from .htransform import (
    DEFTDenoiser,
    HNetConfig,
    HTransformNet,
    fit_normalisation,
    likelihood_feature,
    output_scale,
    weights_fingerprint,
)
from .precision import check_precision
from .schedules import ContinuousVP
from .training import (
    _cpu_generator,
    _export_ema,
    _lr_at,
    _seeded_rng,
    lineage,
    optimiser_step,
    stage_record,
)

__all__ = ["DEFTTrainConfig", "deft_loss", "train_deft"]

_TAG_INIT, _TAG_NOISE, _TAG_DROPOUT, _TAG_VAL = 21, 22, 23, 24
#: Fields that may change when a run is resumed.
_RESUMABLE = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "val_every"})


@dataclass
class DEFTTrainConfig:
    """Everything that defines a DEFT training run (saved as ``train_config.json``).

    Attributes
    ----------
    steps, batch_size
        Optimiser steps (may be raised on resume) and pairs per step.
    lr, warmup_steps, lr_decay, min_lr, weight_decay, betas, grad_clip
        AdamW and its schedule (as :class:`~.training.TrainConfig`).
    ema_decay, ema_warmup
        Parameter EMA of the h-network (the exported model).
    checkpoint_every, keep_checkpoints
        Checkpoint (and export) period in steps; checkpoints kept (>= 2).
    seed
        Seed of the pairs, the times and noise, and the initialisation.
    pairs
        :class:`~sirf_diffusion.data.pairs.PairConfig` fields of the training pairs (split
        ``'train'``).
    val_pairs, val_every
        Validation pairs (the same config on the first ``min(val_pairs, 8)`` subjects of the
        ``'val'`` split, fixed pairs and noise; 0: none) and their period.
    hnet
        :class:`~.htransform.HNetConfig` fields.
    prior
        Folder of the frozen prior (``None``: the shipped ``models/default/xy``).
    precision
        Autocast of both networks: ``'auto'``, ``'fp32'`` or ``'bf16'``.
    init_subsets, init_epochs
        The OSEM image whose support mean normalises each pair (the recipe the model records
        and reconstructions repeat).
    init_from
        A DEFT model folder whose h-network weights start a new run (a warm start: the
        architecture must match; ``output_scaling`` and ``sigma_data`` may differ); ignored
        when resuming.
    """

    steps: int = 2000
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 50
    lr_decay: str = "constant"
    min_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    ema_decay: float = 0.995
    ema_warmup: bool = True
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    pairs: dict[str, Any] = field(default_factory=dict)
    val_pairs: int = 16
    val_every: int = 100
    hnet: dict[str, Any] = field(default_factory=dict)
    prior: str | None = None
    precision: str = "auto"
    init_subsets: int = 12
    init_epochs: int = 2
    init_from: str | None = None

    def __post_init__(self) -> None:
        from ..data.pairs import PairConfig

        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        check_counts(self, "DEFTTrainConfig",
                     positive=("steps", "batch_size", "checkpoint_every", "val_every",
                               "init_subsets", "init_epochs"),
                     non_negative=("warmup_steps", "val_pairs", "seed"))
        check_optimiser_fields(self, "DEFTTrainConfig")
        check_precision(self.precision, "DEFTTrainConfig.precision")
        if self.pairs.get("split", "train") != "train":
            raise ValueError("DEFTTrainConfig.pairs.split must be 'train' (validation pairs "
                             "come from the 'val' split)")
        PairConfig.from_dict(self.pairs)  # validates
        HNetConfig.from_dict(self.hnet)

    def pair_config(self, split: str = "train") -> Any:
        from ..data.pairs import PairConfig

        cfg = dict(self.pairs)
        if split == "val":
            cfg.update(split="val", num_subjects=max(1, min(self.val_pairs, 8)), first_subject=0)
        return PairConfig.from_dict(cfg)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DEFTTrainConfig":
        """Build from a dict; unknown keys raise (keys starting with ``_`` are comments)."""
        return dataclass_from_dict(cls, d, comments=True)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "DEFTTrainConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def deft_loss(prior: Any, hnet: HTransformNet, x0: torch.Tensor,
              feature: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator,
              t_min: float) -> torch.Tensor:
    """The DEFT loss (module docstring) on a batch ``x0`` ``[B, 1, H, W]`` (prior units).

    ``prior`` is the frozen ``D(x, sigma)`` with a continuous VP ``schedule``; ``feature`` maps
    its Tweedie estimates to ``g``; ``t`` and ``eps`` are drawn from ``generator`` only.
    """
    sched = prior.schedule
    if not isinstance(sched, ContinuousVP):
        raise ValueError("DEFT training needs a prior with a continuous VP schedule")
    b = x0.shape[0]
    # 1. t ~ U(t_min, t_max), eps ~ N(0, I), the VE iterate x = x0 + sigma eps at sigma(t)
    t = t_min + (sched.t_max - t_min) * torch.rand(b, generator=generator, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    ab = sched.alpha_bar(t).reshape(-1, 1, 1, 1)
    sigma = torch.sqrt((1 - ab) / ab)
    x = x0 + sigma * eps
    # 2. the frozen prior: Tweedie estimate and its noise estimate eps_theta
    with torch.no_grad():
        x0_hat = prior(x, sigma.reshape(-1))
        eps_theta = (x - x0_hat) / sigma
        g = feature(x0_hat)
    # 3. the h-network's correction and the conditional noise regression
    eps_h = DEFTDenoiser(prior, hnet).correction(x, sigma.reshape(-1), x0_hat, g)
    # 4. EDM's weighting 1 / kappa^2 = 1 + sigma^2 / sigma_data^2 with its output scaling: the
    #    loss of UNet - s g against (x0 - x0_hat) / c_out, of unit size at every noise level
    weight = output_scale(hnet.config, sigma) ** -2
    return torch.mean(weight * (eps - eps_theta - eps_h) ** 2)


# ----------------------------------------------------------------------------- the data
@dataclass
class _Batch:
    """Pairs normalised for the prior: ``x0`` ``[B, 1, y, x]`` and the per-pair feature."""

    x0: torch.Tensor
    likelihoods: list[Any]
    normalisations: list[Any]

    def feature(self, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def g(x0_hat: torch.Tensor) -> torch.Tensor:
            return torch.cat([likelihood_feature(lik, norm, x0_hat[i:i + 1], kind)  # type: ignore[arg-type]
                              for i, (lik, norm) in enumerate(zip(self.likelihoods,
                                                                  self.normalisations))])
        return g


def _normalised_batch(pairs: list[Any], projector: Any, cfg: DEFTTrainConfig) -> _Batch:
    liks, norms, xs = [], [], []
    for p in pairs:
        lik = p.likelihood(projector)
        norm, _, _ = fit_normalisation(lik, cfg.init_subsets, cfg.init_epochs)
        liks.append(lik)
        norms.append(norm)
        xs.append(norm.to_prior(p.image[None]))
    return _Batch(torch.cat(xs), liks, norms)


def _load_prior(cfg: DEFTTrainConfig, prior: nn.Module | None) -> nn.Module:
    if prior is None:
        from .loading import load_slice_prior

        prior = load_slice_prior(cfg.prior)
    prior.precision = cfg.precision  # type: ignore[assignment]
    for p in prior.parameters():
        p.requires_grad_(False)
    return prior.eval()


# ----------------------------------------------------------------------------- the loop
def _check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in _RESUMABLE and saved.get(k) != current.get(k))
    if diff:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume: the config differs from the checkpoint's in {details} "
                         f"(only {sorted(_RESUMABLE)} may change)")


def _validation_loss(prior: nn.Module, hnet: HTransformNet, ema: EMA, batches: list[_Batch],
                     cfg: DEFTTrainConfig, t_min: float) -> float:
    m = copy.deepcopy(hnet)
    ema.copy_to(m)
    m.eval()
    total = 0.0
    with torch.no_grad():
        for i, b in enumerate(batches):
            g = _cpu_generator(cfg.seed, _TAG_VAL, i)
            total += float(deft_loss(prior, m, b.x0, b.feature(m.config.gradient), g, t_min))
    return total / max(1, len(batches))


def train_deft(config: DEFTTrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True, prior: nn.Module | None = None,
               callback: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train the h-network of ``config`` in ``out_dir``; returns the exported model folder.

    Parameters
    ----------
    resume
        Continue from the newest readable checkpoint (a new run when there is none).
    overwrite
        Start again although ``out_dir`` holds checkpoints (they are deleted).
    prior
        The frozen prior (tests); default ``load_slice_prior(config.prior)``.
    callback
        Called after each step with ``{'step', 'loss', 'lr', 'grad_norm', 'checkpoint'}``;
        raising ``StopIteration`` ends the run after a checkpoint.

    Raises
    ------
    OutputExistsError
        ``out_dir`` holds checkpoints and neither ``resume`` nor ``overwrite`` is given.
    ValueError
        A resumed run whose configuration differs in a field that must not change.
    """
    from ..data.pairs import PairedDataset

    cfg = dataclasses.replace(config)
    out = Path(out_dir)
    existing = check_run_folder(out, resume, overwrite, "a DEFT training run: continue it "
                                "with --resume, or pass --overwrite to start again")
    make_dir(out)
    if existing and not resume:
        for path in existing:
            _delete_checkpoint(path)
    found = _load_latest(out, verbose=True) if resume else None
    ckpt = found[0] if found is not None else None
    cfg_dict = cfg.to_dict()
    if ckpt is not None:
        _check_resumable(json.loads(ckpt["config"]), cfg_dict)
    run_id = new_run_id(ckpt)

    prior = _load_prior(cfg, prior)
    t_min = float(getattr(getattr(prior, "config", None), "t_min", 1e-3))
    with _seeded_rng(derive_seed(cfg.seed, _TAG_INIT), torch.device("cpu")):
        hnet = HTransformNet(HNetConfig.from_dict(cfg.hnet), precision=cfg.precision)
    if ckpt is None and cfg.init_from:
        from .deftio import load_deft_model

        warm = load_deft_model(cfg.init_from)
        try:
            hnet.load_state_dict(warm.hnet.state_dict())
        except RuntimeError as e:
            raise ValueError(f"init_from={cfg.init_from!r} does not fit the configured "
                             f"h-network: {e}") from None
        tqdm.write(f"warm start from {cfg.init_from}")
    ema = EMA(hnet, cfg.ema_decay, cfg.ema_warmup)
    opt = torch.optim.AdamW(hnet.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
    start = 0
    if ckpt is not None:
        hnet.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        tqdm.write(f"resuming from step {start}")

    train_ds = PairedDataset(cfg.pair_config("train"), seed=cfg.seed)
    val_batches: list[_Batch] = []
    if cfg.val_pairs > 0:
        val_ds = PairedDataset(cfg.pair_config("val"), seed=cfg.seed + 1)
        val_ds.projector = train_ds.projector = _shared_projector(train_ds)
        val_batches = [_normalised_batch(val_ds.batch(i, cfg.batch_size), val_ds.projector, cfg)
                       for i in range(math.ceil(cfg.val_pairs / cfg.batch_size))]
    geometry = _geometry(train_ds)
    fingerprint = weights_fingerprint(prior)
    prior_dtype = getattr(prior, "network_dtype", lambda: None)()
    write_json(out / "train_config.json", {
        **cfg_dict, "_run_id": run_id, "_torch": str(torch.__version__),
        "_sirf_diffusion": __version__, "_pairs": train_ds.describe(),
        "_prior_fingerprint": fingerprint, "_hnet_parameters": hnet.num_parameters,
        "_prior_parameters": sum(p.numel() for p in prior.parameters()),
        "_network_dtype": str(prior_dtype)})
    t_start = time.perf_counter()

    def export(step: int) -> None:
        stage = stage_record(cfg_dict, step, start,
                             time.perf_counter() - t_start, torch.device("cpu"), prior_dtype)
        extra = {"train_config": cfg_dict, "run_id": run_id, "train_step": step,
                 "pairs": train_ds.describe(), "stages": _stages(out, stage),
                 "warm_start": lineage(cfg.init_from)}
        meta = DEFTModel(hnet, fingerprint, geometry, tuple(train_ds.config.dose_range),
                         {"init_subsets": cfg.init_subsets, "init_epochs": cfg.init_epochs,
                          "kind": "support mean of OSEM (well-sampled voxels, 5 % threshold)"},
                         extra)
        _export_ema(hnet, ema, out / "model", {}, save=lambda d, m, _: save_deft_model(
            d, dataclasses.replace(meta, hnet=m)))

    def checkpoint(step: int) -> Path:
        payload = {"format": _CKPT_FORMAT, "step": step, "run_id": run_id,
                   "model": hnet.state_dict(), "ema": ema.state_dict(),
                   "optimizer": opt.state_dict(), "config": json.dumps(cfg_dict),
                   "rng": {"scheme": "counter-based: derive_seed(seed, tag, step)",
                           "seed": cfg.seed, "next_step": step}}
        path = _save_checkpoint(out, payload, cfg.keep_checkpoints)
        export(step)
        plot_loss(out)
        return path

    def one_step(step: int) -> StepStats:
        lr = _lr_at(cfg, step)  # type: ignore[arg-type]
        for group in opt.param_groups:
            group["lr"] = lr
        batch = _normalised_batch(train_ds.batch(step, cfg.batch_size),
                                  _shared_projector(train_ds), cfg)
        g = _cpu_generator(cfg.seed, _TAG_NOISE, step)
        with _seeded_rng(derive_seed(cfg.seed, _TAG_DROPOUT, step), torch.device("cpu")):
            loss = deft_loss(prior, hnet, batch.x0, batch.feature(hnet.config.gradient), g, t_min)
            loss.backward()
        value = float(loss.detach())
        gn = optimiser_step(hnet, opt, cfg.grad_clip, value, step)
        ema.update(hnet)
        return StepStats(value, lr, gn)

    hnet.train()
    TrainingLoop(
        out, cfg.steps, start, cfg.checkpoint_every, checkpoint, val_every=cfg.val_every,
        validate=((lambda step: _validation_loss(prior, hnet, ema, val_batches, cfg, t_min))
                  if val_batches else None),
        val_log=True, callback=callback, progress=progress,
        desc="training DEFT h-net").run(one_step)
    return out / "model"


def _shared_projector(ds: Any) -> Any:
    from ..data.pairs import pair_projector

    if ds.projector is None:
        ds.projector = pair_projector(ds.config)
    return ds.projector


def _geometry(ds: Any) -> dict[str, Any]:
    from ..data.pairs import image_geometry_2d

    proj = _shared_projector(ds)
    img = image_geometry_2d(ds.config.scanner, ds.config.image_shape)
    return {"scanner": ds.config.scanner, "image_shape": list(img.shape),
            "voxel_size_mm": [float(v) for v in img.voxel_size_mm],
            "data_shape": [int(v) for v in proj.data_shape]}


def _stages(out: Path, stage: dict[str, Any]) -> list[dict[str, Any]]:
    """Stages of this run folder: the earlier processes' (from the exported model) and this
    one's (replacing an entry with the same ``resumed_at``)."""
    old: list[dict[str, Any]] = []
    cfg = out / "model" / "config.json"
    if cfg.is_file():
        try:
            old = json.loads(cfg.read_text()).get("extra", {}).get("stages", [])
        except (OSError, ValueError):
            old = []
    return [s for s in old if s.get("resumed_at") != stage["resumed_at"]] + [stage]
