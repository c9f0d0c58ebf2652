"""How should the prior boundary pad a grid that is not a multiple of the UNet's size multiple?

Reference: the shipped xy prior's D(x, sigma) on a full 128 x 128 grid (a multiple of 8) of
a held-out brain slice (subjects 100 and 101, blurred by 1 voxel, normalised by the support
mean) plus noise of level sigma.  Test: the centre 121 x 121 of the same iterate, padded back
to 128 x 128 in five ways; the number is the relative RMS difference of D inside the head from
the reference, mean of the 2 subjects.  "another noise draw" is D of another noise draw of the
same image, for scale.  The package pads with "zero + noise" (sirf_diffusion.diffusion.padding).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python docs/prior_boundary/padding_study.py
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from sirf_diffusion.data.phantoms import brain_phantom
from sirf_diffusion.diffusion import IntensityNormalisation, load_model
from sirf_diffusion.diffusion.padding import pad_iterate
from sirf_diffusion.models import default_prior_dir

SIGMAS = (0.02, 0.1, 0.5, 2.0, 10.0, 80.0)
MODES = ("zero", "reflect", "replicate", "zero + noise", "another noise draw")


def main() -> None:
    torch.set_num_threads(1)
    model = load_model(default_prior_dir() / "xy")
    lo, hi = 3, 124  # the 121 x 121 centre; padding (3, 4) on each axis restores 128
    res: dict[tuple[float, str], list[float]] = {}
    for seed in (100, 101):
        ph = brain_phantom(seed, dims=2, shape=(1, 128, 128))
        a = torch.tensor(gaussian_filter(np.asarray(ph.activity, np.float32)[0], 1.0))[None]
        x0 = IntensityNormalisation.fit(a[None]).to_prior(a[None])  # [1, 1, 128, 128]
        head = (x0 > 0.05 * x0.max())[0, 0, lo:hi, lo:hi]
        for sigma in SIGMAS:
            s = torch.tensor([sigma])
            x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
            x_other = x0 + sigma * torch.randn(x0.shape,
                                               generator=torch.Generator().manual_seed(seed + 1000))
            xc = x[..., lo:hi, lo:hi]
            padded = {"zero": F.pad(xc, (3, 4, 3, 4)),
                      "reflect": F.pad(xc, (3, 4, 3, 4), mode="reflect"),
                      "replicate": F.pad(xc, (3, 4, 3, 4), mode="replicate"),
                      "zero + noise": pad_iterate(xc, s, 8)[0],
                      "another noise draw": x_other}
            with torch.no_grad():
                ref = model(x, s)[0, 0, lo:hi, lo:hi][head]
                for mode, xp in padded.items():
                    d = model(xp, s)[0, 0, lo:hi, lo:hi][head]
                    err = float((d - ref).norm() / ref.norm())
                    res.setdefault((sigma, mode), []).append(err)
    print("| sigma | " + " | ".join(MODES) + " |")
    print("|---" * (len(MODES) + 1) + "|")
    for sigma in SIGMAS:
        print(f"| {sigma:g} | " + " | ".join(f"{np.mean(res[(sigma, m)]):.1e}" for m in MODES)
              + " |")


if __name__ == "__main__":
    main()
