"""FBSEM-net training: bit-exact resumption, refusals, the exported model and its metadata, and
the ``train-fbsem`` / ``reconstruct --method fbsem`` commands.

The pairs are tiny dense Poisson problems (:func:`conftest.poisson_problem`), one per index, so a
training step costs milliseconds.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import poisson_problem

from sirf_diffusion.diffusion.checkpointing import CheckpointError, list_checkpoints
from sirf_diffusion.io.atomic import OutputExistsError
from sirf_diffusion.recon.fbsem import load_fbsem
from sirf_diffusion.recon.fbsem_training import FBSEMTrainConfig, train_fbsem

pytestmark = pytest.mark.usefixtures("one_thread")

NETWORK = {"num_iterations": 2, "num_subsets": 2, "channels": 4, "depth": 3}


@dataclass
class _Pair:
    image: torch.Tensor
    dose: float
    lik: Any

    def likelihood(self, projector: Any = None) -> Any:
        return self.lik


class _TinyPairs:
    """Pair ``k``: a dense Poisson problem drawn from ``(offset + k)``; float32 data."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def example(self, index: int) -> _Pair:
        lik, truth = poisson_problem(image_shape=(1, 6, 6), num_views=8,
                                     seed=self.offset + index, dtype=torch.float32)
        return _Pair(truth.to(torch.float32), 1.0, lik)

    def describe(self) -> dict[str, Any]:
        return {"tiny": self.offset}


def _sources():
    return _TinyPairs(0), _TinyPairs(10_000)


def _config(**kw) -> FBSEMTrainConfig:
    base = dict(steps=6, batch_size=2, lr=1e-2, warmup_steps=2, ema_decay=0.5, network=NETWORK,
                val_pairs=2, val_every=2, checkpoint_every=2, keep_checkpoints=2)
    return FBSEMTrainConfig(**{**base, **kw})


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [r[:4] for r in csv.reader(f)]  # without the wall-clock column


def test_resumed_training_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    full = train_fbsem(_config(), tmp_path / "full", progress=False, sources=_sources())

    def stop_at_3(info):
        if info["step"] == 3:
            raise StopIteration

    train_fbsem(_config(), tmp_path / "cut", progress=False, sources=_sources(),
                callback=stop_at_3)
    # the interrupted run checkpointed at step 3; resuming replays steps 4-6
    resumed = train_fbsem(_config(), tmp_path / "cut", resume=True, progress=False,
                          sources=_sources())
    a, meta_a = load_fbsem(full)
    b, meta_b = load_fbsem(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert meta_a["weights"]["sha256"] == meta_b["weights"]["sha256"]
    assert _rows(tmp_path / "full" / "loss.csv") == _rows(tmp_path / "cut" / "loss.csv")
    assert _rows(tmp_path / "full" / "val_loss.csv") == _rows(tmp_path / "cut" / "val_loss.csv")
    assert meta_b["extra"]["train_step"] == 6


def test_training_lowers_the_loss_and_records_what_it_was_trained_on(tmp_path):
    cfg = _config(steps=20, batch_size=1, lr=3e-2, val_every=20, checkpoint_every=20)
    model = train_fbsem(cfg, tmp_path / "run", progress=False, sources=_sources(),
                        command="test")
    rows = _rows(tmp_path / "run" / "loss.csv")[1:]
    first, last = float(rows[0][1]), min(float(r[1]) for r in rows[-5:])
    assert last < first
    net, meta = load_fbsem(model)
    t = meta["trained_on"]
    assert t["image_shape"] == [1, 6, 6] and t["counts_per_mm3"] == [0.5, 10.0]
    lo, hi = t["counts_per_voxel"]
    assert 0 < lo < hi
    assert net.config.reference_counts_per_voxel == pytest.approx((lo * hi) ** 0.5)
    assert meta["extra"]["command"] == "test" and meta["extra"]["wall_time_s"] > 0
    assert meta["extra"]["data"]["train"] == {"tiny": 0}


def test_refuses_to_overwrite_and_to_resume_with_another_config(tmp_path):
    train_fbsem(_config(steps=2), tmp_path / "run", progress=False, sources=_sources())
    with pytest.raises(OutputExistsError, match="--resume"):
        train_fbsem(_config(steps=2), tmp_path / "run", progress=False, sources=_sources())
    with pytest.raises(ValueError, match="lr"):
        train_fbsem(_config(steps=4, lr=1e-3), tmp_path / "run", resume=True, progress=False,
                    sources=_sources())
    # a corrupt only checkpoint: one clear error
    for p in list_checkpoints(tmp_path / "run"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"), \
            pytest.warns(UserWarning, match="corrupt or truncated"):
        train_fbsem(_config(steps=4), tmp_path / "run", resume=True, progress=False,
                    sources=_sources())


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="dose_range"):
        FBSEMTrainConfig(dose_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="unknown FBSEM-net training config keys"):
        FBSEMTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="channels"):
        FBSEMTrainConfig(network={"channels": 0})
    with pytest.raises(ValueError, match="device"):
        FBSEMTrainConfig(device="cuda")


# ------------------------------------------------------------------------------ commands
def test_train_fbsem_command_trains_refuses_and_resumes(tmp_path, monkeypatch, capsys):
    import sirf_diffusion.recon.fbsem_training as training
    from sirf_diffusion.cli import main

    monkeypatch.setattr(training, "pair_sources", lambda cfg: _sources())
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(_config(steps=2).to_dict()))
    out = tmp_path / "run"
    assert main(["train-fbsem", "--out", str(out), "--config", str(config), "--no-progress"]) == 0
    assert (out / "model" / "config.json").is_file()
    assert main(["train-fbsem", "--out", str(out), "--config", str(config)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["train-fbsem", "--out", str(out), "--config", str(config), "--steps", "4",
                 "--resume", "--no-progress"]) == 0
    _, meta = load_fbsem(out)  # the run folder is accepted
    assert meta["extra"]["train_step"] == 4
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["train-fbsem", "--out", str(other), "--config", str(config), "--resume"]) == 2
    assert "holds no FBSEM-net run" in capsys.readouterr().err
    assert main(["train-fbsem", "--out", str(tmp_path / "x"), "--config",
                 str(tmp_path / "missing.json")]) == 2
    assert "--config" in capsys.readouterr().err and not (tmp_path / "x").exists()


def _case_model(folder: Path, case: Path, *, voxel_scale: float = 1.0) -> Path:
    """An untrained FBSEM-net saved with the case's geometry (1 x 2 unrolled, 4 channels)."""
    from sirf_diffusion.io.petric import read_case
    from sirf_diffusion.recon.fbsem import FBSEMConfig, FBSEMNet, save_fbsem

    geometry = read_case(case).image_geometry
    vox = list(geometry.voxel_size_mm)
    vox[1:] = [v * voxel_scale for v in vox[1:]]
    net = FBSEMNet(FBSEMConfig(num_iterations=1, num_subsets=2, channels=4, depth=3))
    return save_fbsem(folder, net, {"image_shape": list(geometry.shape), "voxel_size_mm": vox,
                                    "counts_per_voxel": [1e3, 1e4]})


def test_reconstruct_method_fbsem(cli_case, tmp_path, capsys):
    from sirf_diffusion.cli import main

    model = _case_model(tmp_path / "m", cli_case)
    out = tmp_path / "out"
    assert main(["reconstruct", str(cli_case), "--method", "fbsem", "--fbsem-model", str(model),
                 "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "outside the" in captured.err  # the case's counts are below the model's range
    assert "fbsem (1 iterations x 2 subsets" in captured.out
    config = json.loads((out / "config.json").read_text())
    assert config["num_network_evaluations"] == 2 and config["fbsem_warnings"]
    assert (out / "image.hv").is_file() and (out / "metrics.json").is_file()
    # refusals: another voxel size, a corrupt model, an option of another method
    other = _case_model(tmp_path / "m2", cli_case, voxel_scale=2.0)
    assert main(["reconstruct", str(cli_case), "--method", "fbsem", "--fbsem-model", str(other),
                 "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "trained on voxels" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    (model / "model.safetensors").write_bytes(b"x")
    assert main(["reconstruct", str(cli_case), "--method", "fbsem", "--fbsem-model", str(model),
                 "--out", str(tmp_path / "o3")]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert main(["reconstruct", str(cli_case), "--method", "osem", "--fbsem-model", str(model),
                 "--out", str(tmp_path / "o4")]) == 2
    assert "--fbsem-model" in capsys.readouterr().err
