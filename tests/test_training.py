"""Training: loss decreases, exact resume, checkpoints, corruption fallback, DDP == 1 process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sirf_diffusion.diffusion.ema import EMA
from sirf_diffusion.diffusion.training import (
    CheckpointError,
    TrainConfig,
    list_checkpoints,
    load_checkpoint,
    train,
)

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------- tiny test fixtures
class TinyScore(nn.Module):
    """A two-layer conv denoiser with the ``training_loss(x0, generator)`` contract.

    Noise levels and noise come from ``generator``; dropout uses the global RNG (so the test
    also covers the trainer's control of that state).
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.SiLU(), nn.Dropout(0.1),
                                 nn.Conv2d(16, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1).expand_as(x)
        return x + s * self.net(torch.cat([x, s], dim=1))

    def training_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        sigma = torch.exp(torch.randn(x0.shape[0], generator=generator) - 1.0).to(x0)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        return torch.mean((self(x0 + sigma.reshape(-1, 1, 1, 1) * eps, sigma) - x0) ** 2)


def blob_volume(seed: int) -> np.ndarray:
    """Small smooth 3D object [8, 16, 16] whose size and activity depend on the seed."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in (8, 16, 16)], indexing="ij")
    r = (z / 3) ** 2 + (y / rng.uniform(3.5, 6)) ** 2 + (x / rng.uniform(3.5, 6)) ** 2
    return (rng.uniform(1, 5) * np.exp(-r) * (r < 1.5)).astype(np.float32)


def tiny_config(**kw) -> TrainConfig:
    base = dict(steps=10, batch_size=8, lr=3e-3, warmup_steps=3, checkpoint_every=5,
                num_subjects=3, slice_shape=(16, 16), voxel_size_mm=(2.0, 2.0, 2.0),
                psf_fwhm_mm=None, ema_decay=0.9, seed=5, grad_clip=1.0, weight_decay=0.01)
    base.update(kw)
    return TrainConfig(**base)


def run(cfg: TrainConfig, out: Path, **kw) -> Path:
    return train(cfg, out, progress=False, volume_source=blob_volume, model_factory=TinyScore,
                 **kw)


def final_state(out: Path) -> dict:
    return load_checkpoint(list_checkpoints(out)[-1])


def assert_states_equal(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def losses(out: Path) -> list[str]:
    lines = (out / "loss.csv").read_text().splitlines()[1:]
    return [ln.split(",")[1] for ln in lines]


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def cb(info: dict) -> None:
        if info["step"] == step:
            raise Crash(f"simulated kill at step {step}")
    return cb


# Tiny models run fastest on one thread (and the machine is shared); restored after.
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("continuous")
    run(tiny_config(), out)
    return out


# ----------------------------------------------------------------------------------- tests
def test_loss_falls_on_a_tiny_problem(tmp_path):
    cfg = tiny_config(steps=150, checkpoint_every=150, ema_decay=0.95, lr=5e-3)
    model_dir = run(cfg, tmp_path)
    loss = [float(v) for v in losses(tmp_path)]
    assert len(loss) == 150
    assert np.mean(loss[-30:]) < 0.6 * np.mean(loss[:10])
    # fixed-noise evaluation: exported EMA model vs an untrained network of the same kind
    from safetensors.torch import load_file

    trained, fresh = TinyScore(), TinyScore()
    trained.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    x0 = torch.from_numpy(np.stack([blob_volume(s)[4] for s in range(20, 28)]))[:, None]
    x0 = x0 / x0.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        lt = trained.eval().training_loss(x0, torch.Generator().manual_seed(0))
        lf = fresh.eval().training_loss(x0, torch.Generator().manual_seed(0))
    assert float(lt) < 0.5 * float(lf)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["steps"] == 150 and saved["micro_batches"] == 1 and saved["_world_size"] == 1


def test_interrupted_then_resumed_equals_continuous(continuous, tmp_path):
    with pytest.raises(Crash):
        run(tiny_config(), tmp_path, callback=crash_at(7))  # killed after the step-5 checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000005.pt"]
    run(tiny_config(), tmp_path, resume=True)
    assert_states_equal(final_state(tmp_path), final_state(continuous))
    assert losses(tmp_path) == losses(continuous)  # rows of redone steps were replaced


def test_extending_steps_on_resume_equals_continuous(continuous, tmp_path):
    run(tiny_config(steps=5), tmp_path)
    run(tiny_config(steps=10), tmp_path, resume=True)
    assert_states_equal(final_state(tmp_path), final_state(continuous))
    # the oracle is sensitive: another seed gives other parameters
    other = tmp_path / "other"
    run(tiny_config(seed=6), other)
    a, b = final_state(other)["model"], final_state(continuous)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_contents_load_with_weights_only(continuous):
    files = list_checkpoints(continuous)
    assert [p.name for p in files] == ["step_00000005.pt", "step_00000010.pt"]
    ck = torch.load(files[-1], weights_only=True, map_location="cpu")
    assert ck["step"] == 10 and set(ck) >= {"model", "ema", "optimizer", "config", "rng"}
    assert ck["ema"]["num_updates"] == 10 and ck["optimizer"]["state"]
    assert json.loads(ck["config"])["seed"] == 5
    ema = EMA(TinyScore(), 0.9)
    ema.load_state_dict(ck["ema"])
    assert (continuous / "model" / "model.safetensors").is_file()
    assert not list(continuous.glob("*.tmp"))
    assert not list((continuous / "checkpoints").glob("*.tmp"))


def test_only_previous_checkpoint_is_kept(tmp_path):
    run(tiny_config(steps=6, checkpoint_every=2), tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000006.pt"]


def test_checkpoint_steps_come_from_the_file_names(tmp_path):
    from sirf_diffusion.diffusion.checkpointing import checkpoint_step, latest_checkpoint_step

    assert latest_checkpoint_step(tmp_path / "missing") == 0
    run(tiny_config(steps=6, checkpoint_every=2), tmp_path)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [4, 6]
    assert latest_checkpoint_step(tmp_path) == 6
    assert checkpoint_step("step_abc.pt") is None and checkpoint_step("model_00000003.pt") is None


def test_corrupt_checkpoint_error_and_fallback(continuous, tmp_path):
    run(tiny_config(), tmp_path)
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated write
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(newest)
    newest.with_suffix(".sha256").unlink()  # even without the checksum it is detected
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="falling back"):
        run(tiny_config(), tmp_path, resume=True)  # redoes steps 6..10 from step 5
    assert_states_equal(final_state(tmp_path), final_state(continuous))
    # nothing usable left: a clear error, not a silent restart
    for p in list_checkpoints(tmp_path):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"), \
            pytest.warns(UserWarning):
        run(tiny_config(), tmp_path, resume=True)


def test_resume_rejects_a_changed_config_and_overwrite(continuous, tmp_path):
    run(tiny_config(steps=5), tmp_path)
    with pytest.raises(ValueError, match="lr"):
        run(tiny_config(lr=1e-2), tmp_path, resume=True)
    with pytest.raises(FileExistsError, match="resume"):
        run(tiny_config(), tmp_path)


def test_stop_iteration_from_callback_checkpoints_and_exports(tmp_path):
    def stop(info: dict) -> None:
        if info["step"] == 3:
            raise StopIteration

    run(tiny_config(), tmp_path, callback=stop)
    assert load_checkpoint(list_checkpoints(tmp_path)[-1])["step"] == 3
    assert (tmp_path / "model" / "extra.json").is_file()


def test_config_validation_and_json_roundtrip(tmp_path):
    cfg = tiny_config()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"_comment": "x", **cfg.to_dict()}))
    assert TrainConfig.from_json(path) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="orientation"):
        dataclasses.replace(cfg, orientation="zx")
    with pytest.raises(ValueError, match="micro_batches"):
        dataclasses.replace(cfg, micro_batches=3)
    with pytest.raises(ValueError, match="image_size"):
        dataclasses.replace(cfg, model={"image_size": [8, 8]})


def test_default_prior_config_is_valid():
    cfg = TrainConfig.from_json(TESTS.parent / "configs" / "default_prior.json")
    assert cfg.orientation == "xy" and cfg.slice_shape == (112, 112)
    assert cfg.voxel_size_mm[1:] == (2.08626, 2.08626)


@pytest.mark.parametrize("name", ["default_prior_stage4", "default_prior_stage5", "prior_yz",
                                  "prior_xz", "prior_gpu"])
def test_prior_stage_configs_are_valid_and_start_from_shipped_models(name):
    """The recorded stage configs and the prepared GPU config parse, and every warm start
    names a model folder that exists for each orientation they train."""
    import dataclasses

    cfg = TrainConfig.from_json(TESTS.parent / "configs" / f"{name}.json")
    orientations = ("xy", "yz", "xz") if "{orientation}" in cfg.init_from else (cfg.orientation,)
    for o in orientations:
        path = TESTS.parent / dataclasses.replace(cfg, orientation=o).init_path()
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_training_uses_train_split_subjects_only(tmp_path):
    from sirf_diffusion.data.splits import subject_seeds, subject_split

    seen: list[int] = []

    def recording(seed: int) -> np.ndarray:
        seen.append(seed)
        return blob_volume(seed)

    train(tiny_config(steps=2, num_subjects=4, val_subjects=2, val_every=1), tmp_path,
          progress=False, volume_source=recording, model_factory=TinyScore)
    train_seen, val_seen = seen[:4], seen[4:]
    assert train_seen == [int(s) for s in subject_seeds("train", 4)]
    assert val_seen == [int(s) for s in subject_seeds("val", 2)]
    assert all(subject_split(s) == "train" for s in train_seen)
    assert (tmp_path / "val_loss.csv").read_text().count("\n") == 3  # header + 2 steps
    # a second run reuses the cached volumes
    seen.clear()
    train(tiny_config(steps=2, num_subjects=4), tmp_path / "again", progress=False,
          volume_source=recording, model_factory=TinyScore)
    assert len(seen) == 4  # other run dir, no shared cache_dir -> generated once more
    seen.clear()
    train(tiny_config(steps=2, num_subjects=4, cache_dir=str(tmp_path / "data")),
          tmp_path / "shared", progress=False, volume_source=recording, model_factory=TinyScore)
    assert seen == []


_DDP_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {root!r}]
from test_training import TinyScore, blob_volume, tiny_config
from sirf_diffusion.diffusion.training import train
train(tiny_config(steps=4, checkpoint_every=4, micro_batches=2), sys.argv[1], progress=False,
      volume_source=blob_volume, model_factory=TinyScore)
"""


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    single = tmp_path / "single"
    run(tiny_config(steps=4, checkpoint_every=4, micro_batches=2), single)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT.format(tests=str(TESTS), root=str(TESTS.parent))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(ddp)],  # --standalone: rendezvous on a free loopback port
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((ddp / "train_config.json").read_text())["_world_size"] == 2
    a, b = final_state(ddp), final_state(single)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([float(v) for v in losses(ddp)],
                               [float(v) for v in losses(single)], rtol=1e-5)


# ------------------------------------------------------------------------------------- EMA
def test_ema_follows_the_warm_up_recursion():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.25)  # a fixed start: float32 rounding is then the same every run
    ema = EMA(lin, decay=0.9)
    expected = float(lin.weight.detach())
    for n, w in enumerate([1.0, -2.0, 3.0, 0.5, 4.0] * 4):
        with torch.no_grad():
            lin.weight.fill_(w)
        d = min(0.9, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(lin)
        expected = d * expected + (1 - d) * w
        # the shadow is float32, the oracle float64
        assert float(ema.shadow["weight"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert ema.current_decay() == pytest.approx(21 / 30)  # still warming up after 20 updates
    assert EMA(lin, decay=0.9, warmup=False).current_decay() == 0.9
    target = nn.Linear(1, 1, bias=False)
    ema.copy_to(target)
    assert float(target.weight.detach()) == pytest.approx(expected, rel=1e-6)
    clone = EMA(nn.Linear(1, 1, bias=False), decay=0.5)
    clone.load_state_dict(ema.state_dict())
    assert clone.num_updates == 20 and clone.decay == 0.9
    assert torch.equal(clone.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(KeyError, match="disagree"):
        EMA(nn.Linear(2, 1)).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="decay"):
        EMA(lin, decay=1.0)


def test_training_leaves_the_global_rng_untouched(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run(tiny_config(steps=2), tmp_path)
    assert torch.equal(torch.get_rng_state(), before)


def test_real_score_model_trains_and_exports(tmp_path):
    modelio = pytest.importorskip("sirf_diffusion.diffusion.modelio")
    from sirf_diffusion.diffusion.model import ScoreModel

    unet = {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [],
            "groupnorm_groups": 4}
    cfg = tiny_config(steps=3, checkpoint_every=3, model={"unet": unet})
    out = train(cfg, tmp_path / "run", progress=False, volume_source=blob_volume,
                export_dir=tmp_path / "prior" / "xy")
    assert out == tmp_path / "prior" / "xy"
    model = modelio.load_model(out)
    model = model[0] if isinstance(model, tuple) else model
    assert isinstance(model, ScoreModel)
    assert model.config.orientation == "xy" and tuple(model.config.image_size) == (16, 16)
    assert model.config.normalisation["kind"] == "divide_by_support_mean"
    assert model.config.training_data["seeds"] == [2, 3, 4]
    ck = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    ema = EMA(model, 0.9)
    ema.load_state_dict(ck["ema"])
    for k, v in model.state_dict().items():  # the export holds the EMA weights
        assert torch.equal(v, ema.shadow[k]), k
    x = torch.randn(2, 1, 16, 16)
    assert model(x, torch.tensor([0.5, 1.0])).shape == x.shape


def test_real_score_model_resumes_exactly(tmp_path):
    pytest.importorskip("sirf_diffusion.diffusion.modelio")
    unet = {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [2],
            "groupnorm_groups": 4, "dropout": 0.1}
    cfg = tiny_config(steps=4, checkpoint_every=2, model={"unet": unet})
    train(cfg, tmp_path / "a", progress=False, volume_source=blob_volume)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "b", progress=False, volume_source=blob_volume,
              callback=crash_at(3))
    train(cfg, tmp_path / "b", progress=False, volume_source=blob_volume, resume=True)
    assert_states_equal(final_state(tmp_path / "a"), final_state(tmp_path / "b"))


def test_warm_start_from_a_model_folder(tmp_path):
    """``init_from``: a new run starts from an exported model's weights (and its EMA too);
    a mismatched architecture is refused with a clear error."""
    from sirf_diffusion.diffusion.modelio import load_model

    unet = {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [],
            "groupnorm_groups": 4}
    first = train(tiny_config(steps=2, checkpoint_every=2, model={"unet": unet}), tmp_path / "a",
                  progress=False, volume_source=blob_volume)
    w0 = load_model(first).state_dict()
    # one step at a negligible learning rate: the export is the starting weights
    tiny_lr = dict(steps=1, checkpoint_every=1, lr=1e-12, warmup_steps=0, model={"unet": unet})
    warm = train(tiny_config(init_from=str(first), **tiny_lr), tmp_path / "b", progress=False,
                 volume_source=blob_volume)
    cold = train(tiny_config(**tiny_lr), tmp_path / "c", progress=False,
                 volume_source=blob_volume)
    w_warm, w_cold = load_model(warm).state_dict(), load_model(cold).state_dict()
    for k in w0:
        torch.testing.assert_close(w_warm[k], w0[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(w_cold[k], w0[k], atol=1e-4) for k in w0)
    assert json.loads((tmp_path / "b" / "train_config.json").read_text())["init_from"] == str(first)
    bad = tiny_config(steps=1, checkpoint_every=1, init_from=str(first),
                      model={"unet": {**unet, "base_channels": 16}})
    with pytest.raises(ValueError, match="does not fit"):
        train(bad, tmp_path / "d", progress=False, volume_source=blob_volume)


def test_warm_start_path_per_orientation(tmp_path):
    """``{orientation}`` in ``init_from`` names each orientation's own starting model, so one
    config warm-starts xy, yz and xz together."""
    from sirf_diffusion.diffusion.modelio import load_model

    assert tiny_config(init_from="m/{orientation}", orientation="yz").init_path() == "m/yz"
    assert tiny_config().init_path() is None
    unet = {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [],
            "groupnorm_groups": 4}
    for o, seed in (("xy", 1), ("yz", 2)):
        first = train(tiny_config(steps=1, checkpoint_every=1, seed=seed, orientation=o,
                                  model={"unet": unet}), tmp_path / "run" / o, progress=False,
                      volume_source=blob_volume, export_dir=tmp_path / "models" / o)
    starts = {o: load_model(tmp_path / "models" / o).state_dict() for o in ("xy", "yz")}
    assert first == tmp_path / "models" / "yz"
    cfg = tiny_config(steps=1, checkpoint_every=1, lr=1e-12, warmup_steps=0, orientation="yz",
                      model={"unet": unet}, init_from=str(tmp_path / "models" / "{orientation}"))
    warm = load_model(train(cfg, tmp_path / "warm", progress=False,
                            volume_source=blob_volume)).state_dict()
    for k in warm:
        torch.testing.assert_close(warm[k], starts["yz"][k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(warm[k], starts["xy"][k], atol=1e-4) for k in warm)


def test_exports_record_their_stages_and_the_warm_start_lineage(tmp_path):
    """Each export lists the stages of its starting model plus its own (config essentials,
    steps, wall time, where it ran) and the sha256 of the starting weights; a resumed run keeps
    the lineage read when it started, even if ``init_from`` was replaced since."""
    unet = {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [],
            "groupnorm_groups": 4}
    first = train(tiny_config(steps=2, checkpoint_every=2, model={"unet": unet}), tmp_path / "a",
                  progress=False, volume_source=blob_volume)
    meta1 = json.loads((first / "config.json").read_text())
    (stage1,) = meta1["extra"]["stages"]
    assert stage1["steps"] == 2 and stage1["resumed_at"] == 0 and stage1["wall_s"] >= 0
    assert stage1["config"]["init_from"] is None and "torch thread" in stage1["where"]
    cfg = tiny_config(steps=4, checkpoint_every=2, init_from=str(first),
                      model={"unet": unet}, recipe={"time_sampling": "mixture"})
    with pytest.raises(Crash):
        train(cfg, tmp_path / "b", progress=False, volume_source=blob_volume,
              callback=crash_at(2))
    (first / "config.json").write_text(json.dumps({**meta1, "weights": {
        **meta1["weights"], "sha256": "0" * 64}}))  # the starting folder changes meanwhile
    second = train(cfg, tmp_path / "b", progress=False, volume_source=blob_volume, resume=True)
    extra = json.loads((second / "config.json").read_text())["extra"]
    assert extra["init_from_weights_sha256"] == meta1["weights"]["sha256"]
    assert extra["stages"][0] == stage1
    assert extra["stages"][1]["config"]["recipe"] == {"time_sampling": "mixture"}
    assert extra["stages"][1]["steps"] == 4 and extra["stages"][1]["resumed_at"] == 2


def test_cosine_learning_rate_schedule_and_old_checkpoints_resume():
    from sirf_diffusion.diffusion.training import TrainConfig, _check_resumable, _lr_at

    c = TrainConfig(steps=101, warmup_steps=10, lr=1e-3, lr_decay="cosine", min_lr=1e-5)
    assert _lr_at(c, 0) == pytest.approx(1e-4) and _lr_at(c, 9) == pytest.approx(1e-3)
    assert _lr_at(c, 10) == pytest.approx(1e-3)
    assert _lr_at(c, 55) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)       # half way: the mean
    assert _lr_at(c, 100) == pytest.approx(1e-5)
    lrs = [_lr_at(c, s) for s in range(10, 101)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    const = TrainConfig(steps=101, warmup_steps=10, lr=1e-3)
    assert _lr_at(const, 100) == 1e-3
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay="linear")
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    # a checkpoint written before lr_decay/min_lr existed ran with their defaults: resumable
    saved = const.to_dict()
    del saved["lr_decay"], saved["min_lr"]
    _check_resumable(saved, const.to_dict())
    with pytest.raises(ValueError, match="lr_decay"):
        _check_resumable(saved, c.to_dict())


# --------------------------------------------------- outputs: umask, housekeeping, ownership
def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _save_raw_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint file and its sidecar the way the trainer does (for doctored copies)."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())
    path.with_suffix(".sha256").write_text(
        f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {path.name}\n")


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_run_files_and_exported_model_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        run(tiny_config(steps=2, checkpoint_every=2), tmp_path / "run",
            export_dir=tmp_path / "prior" / "xy")
    finally:
        os.umask(old)
    files = [tmp_path / "run" / n for n in ("train_config.json", "loss.csv", "loss.png")]
    files += list((tmp_path / "run" / "checkpoints").iterdir())
    files += list((tmp_path / "prior" / "xy").iterdir())
    assert len(files) == 7
    for p in files:
        assert _mode(p) == 0o666 & ~umask, p
    for d in (tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "prior" / "xy"):
        assert _mode(d) == 0o777 & ~umask, d  # the export folder is not mkdtemp's 0700


def test_stale_temporaries_of_a_killed_write_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    run(tiny_config(steps=5), out)
    ck = out / "checkpoints"
    stale = [ck / ".step_00000010.pt.x81kq.tmp", ck / ".step_00000010.sha256.aa.tmp",
             ck / "step_00000010.pt.q7z2.tmp",  # name used by earlier versions
             out / ".train_config.json.b2.tmp", out / "data" / ".volumes_train.npz.c3.tmp"]
    for p in stale:
        p.write_bytes(b"half a write")
    half_export = out / ".model.d4e5.tmp"
    half_export.mkdir()
    (half_export / "model.safetensors").write_bytes(b"partial")
    notes = ck / "notes.txt"
    notes.write_text("not ours to delete")
    run(tiny_config(steps=10), out, resume=True)
    assert not any(p.exists() for p in [*stale, half_export])
    assert notes.read_text() == "not ours to delete"
    assert [p.name for p in list_checkpoints(out)] == ["step_00000005.pt", "step_00000010.pt"]


def test_a_kill_while_swapping_the_export_is_recovered(tmp_path):
    out = tmp_path / "run"
    run(tiny_config(steps=5), out)
    os.replace(out / "model", out / "model.old")  # killed between the two renames
    run(tiny_config(steps=10), out, resume=True)
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model.old").exists()


def test_retention_counts_only_readable_checkpoints_of_this_run(continuous, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(steps=5), out)
    ck = out / "checkpoints"
    # newer-looking but unreadable files: retention by name alone would keep only these
    (ck / "step_00000098.pt").write_bytes(b"truncated by a full disk")
    (ck / "step_00000099.pt").write_bytes((continuous / "checkpoints" /
                                           "step_00000010.pt").read_bytes()[:5000])
    # a complete checkpoint of another run (same config), copied in
    foreign = ck / "step_00000001.pt"
    foreign.write_bytes((continuous / "checkpoints" / "step_00000005.pt").read_bytes())
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        run(tiny_config(steps=10, checkpoint_every=2), out, resume=True)
    names = [p.name for p in list_checkpoints(out)]
    # this run's newest two are kept; the unreadable and foreign files are untouched
    assert names == ["step_00000001.pt", "step_00000008.pt", "step_00000010.pt",
                     "step_00000098.pt", "step_00000099.pt"]
    assert foreign.read_bytes() == (continuous / "checkpoints" / "step_00000005.pt").read_bytes()
    ids = {load_checkpoint(ck / n)["run_id"] for n in ("step_00000008.pt", "step_00000010.pt")}
    assert len(ids) == 1 and load_checkpoint(foreign)["run_id"] not in ids
    assert_states_equal(final_state_of(out, "step_00000010.pt"), final_state(continuous))


def final_state_of(out: Path, name: str) -> dict:
    return load_checkpoint(out / "checkpoints" / name)


def test_existing_run_without_resume_is_refused_in_one_line(continuous, tmp_path):
    from sirf_diffusion.io.atomic import OutputExistsError

    out = tmp_path / "run"
    run(tiny_config(steps=5), out)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    with pytest.raises(OutputExistsError) as err:
        run(tiny_config(), out)
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and "--resume" in msg and "--overwrite" in msg
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before
    # overwrite: a new run from step 0 (the old checkpoints go), identical to a fresh one
    run(tiny_config(), out, overwrite=True)
    assert [p.name for p in list_checkpoints(out)] == ["step_00000005.pt", "step_00000010.pt"]
    assert_states_equal(final_state(out), final_state(continuous))


def test_no_usable_checkpoint_is_one_clear_line(tmp_path):
    out = tmp_path / "run"
    run(tiny_config(steps=5), out)
    list_checkpoints(out)[0].write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as err, pytest.warns(UserWarning):
        run(tiny_config(), out, resume=True)
    msg = str(err.value)
    assert "\n" not in msg and "no usable checkpoint" in msg and "step_00000005.pt" in msg


def test_train_never_replaces_an_export_it_did_not_produce(tmp_path):
    from sirf_diffusion.io.atomic import OutputExistsError

    prior = tmp_path / "prior" / "xy"
    run(tiny_config(steps=5), tmp_path / "a", export_dir=prior)
    weights_a = (prior / "model.safetensors").read_bytes()
    # another run (even with the same config) must not replace it, and finds out before working
    with pytest.raises(OutputExistsError) as err:
        run(tiny_config(steps=5), tmp_path / "b", export_dir=prior,
            callback=lambda info: pytest.fail("trained before refusing"))
    msg = str(err.value)
    assert "\n" not in msg and str(prior) in msg and "--overwrite" in msg and "--resume" in msg
    assert (prior / "model.safetensors").read_bytes() == weights_a
    assert not (tmp_path / "b" / "checkpoints").exists()
    # resumed with --resume, run a replaces its own export
    run(tiny_config(steps=10), tmp_path / "a", export_dir=prior, resume=True)
    weights_a10 = (prior / "model.safetensors").read_bytes()
    assert weights_a10 != weights_a
    # run b with overwrite replaces it; then run a's resumption must not take it back
    run(tiny_config(steps=5), tmp_path / "b", export_dir=prior, overwrite=True)
    assert json.loads((prior / "extra.json").read_text())["run_id"] == \
        final_state(tmp_path / "b")["run_id"]
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(tiny_config(steps=12), tmp_path / "a", export_dir=prior, resume=True)
    # a folder of someone's files, and a file, are not model folders to replace
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="holds files"):
        run(tiny_config(steps=2), tmp_path / "c", export_dir=mine)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        run(tiny_config(steps=2), tmp_path / "d", export_dir=tmp_path / "file")
    # an empty folder is fine
    (tmp_path / "empty").mkdir()
    run(tiny_config(steps=2, checkpoint_every=2), tmp_path / "e", export_dir=tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_runs_from_before_run_ids_resume_into_their_own_export(tmp_path):
    """Checkpoints and exports without a run id are recognised by their training config."""
    out = tmp_path / "run"
    run(tiny_config(steps=5, checkpoint_every=5), out)
    path = list_checkpoints(out)[0]
    legacy = load_checkpoint(path)
    del legacy["run_id"]
    _save_raw_checkpoint(path, legacy)
    extra = json.loads((out / "model" / "extra.json").read_text())
    del extra["run_id"]
    (out / "model" / "extra.json").write_text(json.dumps(extra))
    run(tiny_config(steps=15, checkpoint_every=5), out, resume=True)
    names = [p.name for p in list_checkpoints(out)]
    assert names == ["step_00000010.pt", "step_00000015.pt"]  # the legacy one counted as ours
    assert final_state(out)["run_id"].startswith("config-")


@pytest.mark.parametrize("cls_path", ["sirf_diffusion.diffusion.training.TrainConfig",
                                      "sirf_diffusion.diffusion.deft_training.DEFTTrainConfig",
                                      "sirf_diffusion.recon.fbsem_training.FBSEMTrainConfig"])
@pytest.mark.parametrize("field_name, value, message", [
    ("steps", 0, "steps must be a positive integer"),
    ("batch_size", 2.0, "batch_size must be a positive integer"),
    ("checkpoint_every", True, "checkpoint_every must be a positive integer"),
    ("warmup_steps", -1, "warmup_steps must be a non-negative integer"),
    ("seed", -3, "seed must be a non-negative integer"),
    ("lr", 0.0, "lr must be > 0"),
    ("lr", float("nan"), "lr must be > 0"),
    ("grad_clip", 0.0, "grad_clip must be > 0 or None"),
    ("keep_checkpoints", 1, "keep_checkpoints must be an integer >= 2"),
])
def test_trainer_configs_share_one_validation(cls_path, field_name, value, message):
    """The three trainers' configs refuse the same bad values with the same words, naming the
    config class and the field (training_loop.check_counts / check_optimiser_fields)."""
    import importlib

    module, name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ValueError, match=f"{name}.{message}"):
        cls(**{field_name: value})
