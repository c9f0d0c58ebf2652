"""io.atomic: the one atomic-write helper (umask, strict JSON, no temporaries left) and the
package's writers that use it."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from sirf_diffusion.io.atomic import (
    OutputExistsError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temporaries,
    temporary_dir,
    write_json,
)

UMASKS = [0o027, 0o002]


@pytest.fixture(params=UMASKS, ids=lambda m: f"umask{m:03o}")
def umask(request):
    """Run the test under ``request.param`` and restore the process umask afterwards."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_files_and_folders_follow_the_umask(tmp_path, umask):
    f = atomic_write_text(tmp_path / "a.txt", "hello")
    assert f.read_text() == "hello"
    assert mode(f) == 0o666 & ~umask  # not mkstemp's 0600
    d = temporary_dir(tmp_path, "result")
    assert d.is_dir() and d.name.startswith(".result.") and d.name.endswith(".tmp")
    assert mode(d) == 0o777 & ~umask  # not mkdtemp's 0700
    j = write_json(tmp_path / "b.json", {"x": 1})
    assert mode(j) == 0o666 & ~umask


def test_replacing_a_file_keeps_no_temporaries(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")
    atomic_write_bytes(p, lambda fh: fh.write(b"new"))
    assert p.read_bytes() == b"new"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_nan_and_inf_become_null_and_json_is_strict(tmp_path):
    p = write_json(tmp_path / "m.json", {"nrmse": float("nan"), "psnr": math.inf,
                                          "values": (1.0, -math.inf, np.float32(2.5)),
                                          "tensor": torch.tensor([1.0, float("nan")]),
                                          "path": tmp_path})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)  # strict parsers accept it
    assert back == {"nrmse": None, "psnr": None, "values": [1.0, None, 2.5],
                    "tensor": [1.0, None], "path": str(tmp_path)}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "result.txt"
    atomic_write_text(p, "complete")

    def explode(fh) -> None:
        fh.write(b"half of it")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(p, explode)
    with pytest.raises(KeyboardInterrupt), atomic_write(p) as fh:
        fh.write(b"partial")
        raise KeyboardInterrupt
    assert p.read_text() == "complete"
    assert temporaries(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    keep = [tmp_path / "image.hv", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in keep:
        p.write_text("keep")
    stale = [tmp_path / ".image.hv.k3j2.tmp", tmp_path / ".config.json.abcd.tmp"]
    for p in stale:
        p.write_text("half")
    folder = temporary_dir(tmp_path, "xy")
    (folder / "model.safetensors").write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path, "image.hv") == [stale[0]]
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale[1], folder])
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_output_exists_error_is_a_file_exists_error():
    assert issubclass(OutputExistsError, FileExistsError)
    assert issubclass(OutputExistsError, OSError)


# ------------------------------------------------------------------ the package's writers
def test_writers_follow_the_umask(tmp_path, umask):
    from sirf_diffusion.diffusion.datasets import build_volume_pool
    from sirf_diffusion.diffusion.model import ScoreModel, ScoreModelConfig
    from sirf_diffusion.diffusion.modelio import save_model
    from sirf_diffusion.diffusion.unet import UNetConfig
    from sirf_diffusion.io import write_image
    from sirf_diffusion.physics.geometry import ImageGeometry

    geom = ImageGeometry((1, 4, 4), (2.0, 2.0, 2.0))
    written = [write_image(tmp_path / "img.hv", np.ones((1, 4, 4), np.float32), geom)]
    written += [tmp_path / "img.v"]
    tiny = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_resolutions=(), groupnorm_groups=4)
    model_dir = save_model(tmp_path / "model", ScoreModel(ScoreModelConfig(unet=tiny,
                                                                           image_size=(8, 8))))
    written += sorted(model_dir.iterdir())
    build_volume_pool([1], lambda s: np.ones((2, 3, 3), np.float32),
                      cache_path=tmp_path / "cache" / "v.npz", progress=False)
    written += [tmp_path / "cache" / "v.npz"]
    for p in written:
        assert mode(p) == 0o666 & ~umask, p
    for d in (model_dir, tmp_path / "cache"):
        assert mode(d) == 0o777 & ~umask, d
    assert temporaries(tmp_path) == []


def test_nifti_writer_follows_the_umask(tmp_path, umask):
    pytest.importorskip("nibabel")
    from sirf_diffusion.io import read_nifti, write_nifti
    from sirf_diffusion.physics.geometry import ImageGeometry

    geom = ImageGeometry((2, 3, 4), (2.0, 2.5, 3.0))
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name in ("a.nii", "a.nii.gz"):
        p = write_nifti(tmp_path / name, a, geom)
        assert mode(p) == 0o666 & ~umask
        back, g = read_nifti(p)
        np.testing.assert_array_equal(back, a)
        assert np.allclose(g.voxel_size_mm, geom.voxel_size_mm)
    assert temporaries(tmp_path) == []
