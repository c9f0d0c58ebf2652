"""Paired training data (``sirf_diffusion.data.pairs``): reproducible, split-safe, physical.

The pairs use a small grid (48 x 48 voxels, 36 views) so the projector is quick to build; the
physics is the full ``simulate_scan`` chain all the same.
"""

from __future__ import annotations

import math

import pytest
import torch

from sirf_diffusion.data.pairs import (
    PairConfig,
    PairedDataset,
    draw_pair,
    noise_free_scan,
    pair_projector,
    paired_example,
)
from sirf_diffusion.data.simulate import simulate_scan
from sirf_diffusion.data.splits import subject_split

SMALL = dict(image_shape=(48, 48), num_views=36, num_subjects=3)


@pytest.fixture(scope="module")
def dataset() -> PairedDataset:
    return PairedDataset(PairConfig(**SMALL), seed=3)


def test_pair_matches_simulate_scan_at_its_dose(dataset):
    """Scaling the 1-count/mm^3 scan by the dose gives simulate_scan's image and background."""
    cfg = dataset.config
    subject = cfg.subjects()[0]
    pair = paired_example(subject, 2.5, plane_offset_mm=8.125, noise_seed=1, config=cfg,
                          projector=dataset.projector or pair_projector(cfg))
    scan = simulate_scan(cfg.simulation_config(subject, 8.125, dose=2.5), progress=False)
    assert pair.z_mm == scan.config.z_mm
    torch.testing.assert_close(pair.image, scan.reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair.additive, scan.additive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair.multiplicative, scan.multiplicative)
    # the prompts are Poisson around ybar of the pair's own physics
    ybar = pair.acquisition_model().forward(pair.image[None])[0]
    total, counts = float(ybar.sum()), float(pair.prompts.sum())
    assert abs(counts - total) < 5 * math.sqrt(total)


def test_examples_are_pure_functions_of_seed_and_index(dataset):
    fresh = PairedDataset(dataset.config, seed=3)
    a, b = dataset.batch(4, 2), fresh.batch(4, 2)   # no history in `fresh`
    for x, y in zip(a, b):
        assert (x.subject, x.z_mm, x.dose) == (y.subject, y.z_mm, y.dose)
        assert x.noise_seed == y.noise_seed
        assert torch.equal(x.prompts, y.prompts) and torch.equal(x.image, y.image)
    other = PairedDataset(dataset.config, seed=4).keys(8)
    assert other != dataset.keys(8)


def test_keys_cover_the_configured_ranges(dataset):
    cfg = dataset.config
    keys = [dataset.keys(k) for k in range(200)]
    doses = [k[2] for k in keys]
    assert min(doses) >= cfg.dose_range[0] and max(doses) <= cfg.dose_range[1]
    # log-uniform: about half of the doses below the geometric mean
    mid = math.sqrt(cfg.dose_range[0] * cfg.dose_range[1])
    assert 70 < sum(d < mid for d in doses) < 130
    assert {k[0] for k in keys} == set(cfg.subjects())
    assert {k[1] for k in keys} == set(cfg.plane_offsets_mm)


def test_noise_seed_and_dose_change_the_realisation(dataset):
    scan = dataset.scan(dataset.config.subjects()[0], 0.0)
    p1, p2 = draw_pair(scan, 1.0, 0), draw_pair(scan, 1.0, 1)
    assert not torch.equal(p1.prompts, p2.prompts)
    assert torch.equal(p1.image, p2.image)
    p3 = draw_pair(scan, 4.0, 0)
    torch.testing.assert_close(p3.image, 4 * p1.image)
    with pytest.raises(ValueError, match="dose"):
        draw_pair(scan, 0.0, 0)


def test_test_subjects_are_never_used():
    with pytest.raises(ValueError, match="test subjects"):
        PairConfig(split="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not 'train'"):
        noise_free_scan(10, 0.0, PairConfig(**SMALL))
    val = PairConfig(**{**SMALL, "split": "val"})
    assert {subject_split(s) for s in val.subjects()} == {"val"}
    assert {subject_split(s) for s in PairConfig(num_subjects=40).subjects()} == {"train"}


@pytest.mark.parametrize("bad", [dict(dose_range=(0.0, 1.0)), dict(dose_range=(2.0, 1.0)),
                                 dict(plane_offsets_mm=()), dict(num_subjects=0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError, match="PairConfig"):
        PairConfig(**bad)


def test_config_round_trips():
    cfg = PairConfig(**SMALL)
    assert PairConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PairConfig"):
        PairConfig.from_dict({"dose": 1})
