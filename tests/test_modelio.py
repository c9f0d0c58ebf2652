"""save_model / load_model round trips and refusal of corrupt, tampered or mismatched files."""

import json

import pytest
import torch

from sirf_diffusion.diffusion.model import ScoreModel, ScoreModelConfig
from sirf_diffusion.diffusion.modelio import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    load_prior,
    save_model,
    save_prior,
)
from sirf_diffusion.diffusion.unet import UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                  attention_resolutions=(2,), groupnorm_groups=4)


# Tiny models run fastest on one thread (and the machine is shared); restored after.
pytestmark = pytest.mark.usefixtures("one_thread_module")


def _model(orientation="xy", seed=0):
    m = ScoreModel(ScoreModelConfig(unet=TINY, image_size=(8, 8), orientation=orientation,
                                    training_data={"source": "unit test"}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():  # non-trivial weights, zero-initialised layers included
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m


X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))
SIGMA = torch.tensor([0.1, 1.0, 10.0])


def test_round_trip_equal_outputs_and_metadata(tmp_path):
    m = _model()
    save_model(tmp_path, m, extra={"epochs": 3})
    back = load_model(tmp_path)
    assert not back.training and back.config == m.config
    with torch.no_grad():
        assert torch.equal(back(X, SIGMA), m.eval()(X, SIGMA))
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["extra"] == {"epochs": 3}
    assert meta["weights"]["num_parameters"] == m.num_parameters
    assert meta["model"]["training_data"] == {"source": "unit test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temps


def test_float16_weights_half_size_loaded_as_float32(tmp_path):
    m = _model()
    save_model(tmp_path / "f32", m)
    save_model(tmp_path / "f16", m, dtype="float16")
    size32 = (tmp_path / "f32" / WEIGHTS_FILE).stat().st_size
    size16 = (tmp_path / "f16" / WEIGHTS_FILE).stat().st_size
    assert size16 < 0.6 * size32
    back = load_model(tmp_path / "f16")
    for (k, v), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items()):
        assert k == k2 and v2.dtype == torch.float32
        assert torch.equal(v2, v.half().float())  # exactly the float16-rounded weights


def test_tampered_byte_refused(tmp_path):
    save_model(tmp_path, _model())
    w = tmp_path / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors.*sha256 mismatch"):
        load_model(tmp_path)


def test_truncated_refused(tmp_path):
    save_model(tmp_path, _model())
    w = tmp_path / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        load_model(tmp_path)


def test_unreadable_safetensors_with_matching_hash_refused(tmp_path):
    """Even a file whose hash was updated to match is parsed safely and refused."""
    save_model(tmp_path, _model())
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    import hashlib
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["weights"]["sha256"] = hashlib.sha256((tmp_path / WEIGHTS_FILE).read_bytes()).hexdigest()
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(tmp_path)


@pytest.mark.parametrize("field,value,message", [("base_channels", 16, "tensor shapes"),
                                                 ("num_res_blocks", 2, "tensor names")])
def test_architecture_mismatch_refused(tmp_path, field, value, message):
    save_model(tmp_path, _model())
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["model"]["unet"][field] = value
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model(tmp_path / "nowhere")
    save_model(tmp_path / "a", _model())
    (tmp_path / "a" / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: weights file not found"):
        load_model(tmp_path / "a")
    save_model(tmp_path / "b", _model())
    (tmp_path / "b" / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json: model config file not found"):
        load_model(tmp_path / "b")
    save_model(tmp_path / "c", _model())
    (tmp_path / "c" / CONFIG_FILE).write_text("{ truncated")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_model(tmp_path / "c")
    (tmp_path / "c" / CONFIG_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a sirf-diffusion model config"):
        load_model(tmp_path / "c")


def test_bad_save_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        save_model(tmp_path, _model(), dtype="int8")
    with pytest.raises(ValueError, match="JSON"):
        save_model(tmp_path, _model(), extra={"x": object()})
    with pytest.raises(TypeError, match="ScoreModel"):
        save_model(tmp_path, torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_prior_directory(tmp_path):
    models = {"xy": _model("xy", 1), "yz": _model("yz", 2)}
    save_prior(tmp_path, models, dtype="float16")
    loaded = load_prior(tmp_path)
    assert set(loaded) == {"xy", "yz"}
    assert loaded["yz"].config.orientation == "yz"
    assert set(load_prior(tmp_path, orientations=("yz",))) == {"yz"}
    with pytest.raises(FileNotFoundError, match="xz"):
        load_prior(tmp_path, orientations=("xy", "xz"))
    # a model stored under the wrong orientation is refused
    save_model(tmp_path / "xz", _model("xy"))
    with pytest.raises(ValueError, match="stored under 'xz'"):
        load_prior(tmp_path)
    with pytest.raises(ValueError, match="trained on orientation"):
        save_prior(tmp_path / "p2", {"xz": _model("xy")})


def test_sample_grid_png(tmp_path):
    from sirf_diffusion.samplers.unconditional import sample_grid_png

    save_model(tmp_path / "m", _model())
    out = sample_grid_png(tmp_path / "m", tmp_path / "grid.png", n=5, num_steps=3,
                          generator=torch.Generator().manual_seed(0))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
