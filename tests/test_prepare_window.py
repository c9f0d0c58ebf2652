"""``prepare`` denoises on a window around the object on grids larger than the prior's (step 4).

The shipped xy prior was trained on 112 x 112 slices of 2.086 mm (234 mm); on a 181 x 181 or
285 x 285 grid of that voxel size most of the slice is background, so ``prepare`` wraps the
denoiser in a :class:`WindowedDenoiser` around the support of the initial image.  No network is
evaluated here: the decision and the window only need the model's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from sirf_diffusion.diffusion import load_model
from sirf_diffusion.diffusion.window import WindowedDenoiser, drop_specks
from sirf_diffusion.models import default_prior_dir
from sirf_diffusion.samplers.run import _prior_window

VOXEL = (2.03125, 2.08626, 2.08626)


@dataclass
class _Grid:
    """The part of a likelihood the window decision reads."""

    image_shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float] = VOXEL

    def sensitivity(self, subset=None, like=None):
        return torch.ones(self.image_shape)


@pytest.fixture(scope="module")
def prior():
    return load_model(default_prior_dir() / "xy").eval()


def _head(shape, centre, radius):
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape),
                             indexing="ij")
    return ((y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2).float() * 3.0 + 0.01


@pytest.mark.parametrize("n", [181, 285])
def test_large_grids_get_a_window_around_the_object(prior, n):
    shape = (1, n, n)
    image = _head(shape, (n // 2 + 7, n // 2 - 11), 40)
    d = _prior_window(prior, _Grid(shape), image, None, None)
    assert isinstance(d, WindowedDenoiser) and d.denoiser is prior
    top, left, h, w = d.window
    assert h >= 112 and w >= 112 and h % 8 == 0 and w % 8 == 0
    inside = image[0] > 1
    ys, xs = inside.nonzero(as_tuple=True)
    assert top <= int(ys.min()) and int(ys.max()) < top + h       # the object is in the window
    assert left <= int(xs.min()) and int(xs.max()) < left + w
    assert top + h <= n and left + w <= n


def test_noisy_background_voxels_do_not_stretch_the_window(prior):
    # a 30-iteration MLEM image of the full mMR had 224 specks above 5 % of its maximum
    # outside the head, which stretched the window to 224 x 248 voxels (docs/projector.md)
    shape = (1, 285, 285)
    clean = _head(shape, (150, 140), 40)
    noisy = clean.clone()
    for y, x in ((5, 5), (280, 150), (140, 3), (20, 270)):
        noisy[0, y, x] = 2.0                                  # single voxels, 67 % of the max
    noisy[0, 260:263, 30:33] = 2.5                            # and a 3 x 3 blotch
    window = _prior_window(prior, _Grid(shape), clean, None, None).window
    assert window == (94, 84, 112, 112)
    assert _prior_window(prior, _Grid(shape), noisy, None, None).window == window
    # a mask given by the caller is taken as it is
    mask = noisy > 1
    assert _prior_window(prior, _Grid(shape), noisy, mask, None).window == (0, 0, 285, 280)


def test_drop_specks_keeps_every_part_of_the_object():
    mask = torch.zeros(4, 60, 60, dtype=torch.bool)
    mask[:, 10:40, 10:40] = True                              # the head: 3600 voxels
    mask[1:3, 45:52, 45:52] = True                            # a separate part: 98 (2.7 %)
    mask[0, 58, 2] = mask[3, 1, 57] = True                    # two specks
    kept = drop_specks(mask)
    assert int(kept.sum()) == int(mask.sum()) - 2 and not kept[0, 58, 2]
    assert torch.equal(drop_specks(kept), kept)
    assert torch.equal(drop_specks(mask, 0.0), mask)
    assert int(drop_specks(mask, 0.05).sum()) == 3600        # 5 %: the separate part goes too
    with pytest.raises(ValueError, match="fraction"):
        drop_specks(mask, 1.0)
    with pytest.raises(ValueError, match="boolean"):
        drop_specks(mask.float())


def test_the_prior_grid_is_left_alone_and_the_option_decides(prior):
    shape = (1, 128, 128)            # 1.14 x the prior's field of view: no window by default
    image = _head(shape, (64, 64), 40)
    assert _prior_window(prior, _Grid(shape), image, None, None) is prior
    assert _prior_window(prior, _Grid(shape), image, None, False) is prior
    assert isinstance(_prior_window(prior, _Grid(shape), image, None, True), WindowedDenoiser)
    big = (1, 285, 285)
    assert _prior_window(prior, _Grid(big), _head(big, (140, 140), 40), None, False) is prior
    assert _prior_window(prior, _Grid(big), None, None, None) is prior   # nothing to centre on
    with pytest.raises(ValueError, match="prior_window"):
        _prior_window(prior, _Grid(big), None, None, "yes")


def test_a_toy_denoiser_is_never_windowed_automatically():
    shape = (1, 285, 285)
    toy = lambda x, sigma: x  # noqa: E731
    assert _prior_window(toy, _Grid(shape), _head(shape, (140, 140), 40), None, None) is toy


def test_bad_options_are_refused_before_the_initial_reconstruction():
    """Increasing noise levels, or a forced window with nothing to centre it on, are refused
    before any projection is spent."""
    from conftest import gaussian_denoiser, poisson_problem

    from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
    from sirf_diffusion.samplers.run import prepare

    lik, _ = poisson_problem()
    with pytest.raises(ValueError, match="decreasing"):
        prepare("lisch", lik, gaussian_denoiser(), sigmas=torch.tensor([1.0, 2.0, 0.0]))
    assert lik.num_forward == 0
    with pytest.raises(ValueError, match="support_mask"):
        prepare("dds", lik, gaussian_denoiser(), IntensityNormalisation(1.0), num_steps=2,
                prior_window=True)
