"""``simulate --span / --image-size``: the geometries of the matrix-free projector from the CLI.

The full mMR in span 11 is ``simulate --dims 3 --rings 64 --max-ring-difference 60 --span 11
--image-size 285`` (a benchmark, see docs/physics.md); here a small span-3 case goes through the
same code, and the flags are validated with one line naming them.
"""

from __future__ import annotations

import pytest

from sirf_diffusion.cli import main
from sirf_diffusion.io.interfile import read_image, read_sinogram


def test_simulate_writes_a_span_3_case_with_the_requested_image_size(tmp_path):
    out = tmp_path / "case"
    code = main(["simulate", "--out", str(out), "--dims", "3", "--rings", "3",
                 "--max-ring-difference", "2", "--span", "3", "--image-size", "24",
                 "--lesions", "0", "--no-progress"])
    assert code == 0
    data, geometry = read_sinogram(out / "prompts.hs")
    assert geometry.span == 3 and geometry.max_ring_difference == 2
    assert data.shape == geometry.shape
    image, _ = read_image(out / "OSEM_image.hv")
    assert image.shape == (5, 24, 24)


@pytest.mark.parametrize("args, needle", [
    (["--dims", "3", "--span", "2", "--max-ring-difference", "3"], "--span must be odd"),
    (["--dims", "3", "--rings", "8", "--span", "11", "--max-ring-difference", "4"],
     "--max-ring-difference of at least 5"),
    (["--span", "3"], "--span applies to --dims 3 only"),
    (["--image-size", "0"], "--image-size"),
])
def test_simulate_rejects_bad_geometry_flags(tmp_path, capsys, args, needle):
    assert main(["simulate", "--out", str(tmp_path / "case"), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "case").exists()
