"""The shared weight-folder format (:mod:`sirf_diffusion.io.weights`): what every model module
writes and the refusals every loader inherits."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from sirf_diffusion.io.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WeightsFolder,
    check_tensor_fit,
    encode_weights,
)

FOLDER = WeightsFolder("test-format/1", "test model", "not a test model",
                       sections=("network",), config_hint=" (make one with save)")


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3), "n": torch.tensor([3])}


def test_round_trip_records_the_sha256_of_the_bytes_written(tmp_path):
    enc = FOLDER.encode(_state())
    meta = {"format": FOLDER.format, "network": {}, "weights": enc.record(num_parameters=6)}
    FOLDER.save(tmp_path, enc, meta)
    blob = (tmp_path / WEIGHTS_FILE).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == enc.sha256 == meta["weights"]["sha256"]
    # the section's key order is part of the on-disk format
    assert list(meta["weights"]) == ["file", "sha256", "num_parameters", "num_tensors"]
    back = FOLDER.read_weights(tmp_path, FOLDER.read_config(tmp_path))
    assert back["w"].dtype == torch.float32 and back["n"].dtype == _state()["n"].dtype
    assert torch.equal(back["w"], _state()["w"].float()) and torch.equal(back["n"], _state()["n"])
    assert encode_weights(_state(), FOLDER.format).sha256 == enc.sha256


def test_refusals_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="test model folder not found"):
        FOLDER.read_config(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"config\.json: test model config file not found"
                                                r" \(make one with save\)"):
        FOLDER.read_config(tmp_path)
    enc = FOLDER.encode(_state())
    meta = {"format": FOLDER.format, "network": {}, "weights": enc.record()}
    FOLDER.save(tmp_path, enc, meta)
    blob = bytearray((tmp_path / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 mismatch"):
        FOLDER.read_weights(tmp_path, FOLDER.read_config(tmp_path))
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        FOLDER.read_weights(tmp_path, FOLDER.read_config(tmp_path))
    for text, message in (("{", "not valid JSON"), ('{"format": "x"}', "not a test model"),
                          (json.dumps({"format": FOLDER.format, "weights": {}}),
                           "missing the 'network' section")):
        (tmp_path / CONFIG_FILE).write_text(text)
        with pytest.raises(ValueError, match=message):
            FOLDER.read_config(tmp_path)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        FOLDER.save(tmp_path / "nan", enc, {"x": float("nan")})
    assert not (tmp_path / "nan" / WEIGHTS_FILE).exists()


def test_tensor_fit_lists_names_and_shapes():
    ref = {"a": torch.zeros(2), "b": torch.zeros(3)}
    check_tensor_fit({"a": torch.ones(2), "b": torch.ones(3)}, ref, "w", "c")
    with pytest.raises(ValueError, match=r"tensor names differ: missing \['b'\], unexpected "
                                         r"\['c'\]"):
        check_tensor_fit({"a": torch.ones(2), "c": torch.ones(3)}, ref, "w", "c")
    with pytest.raises(ValueError, match=r"do not fit the network.*tensor shapes differ: a: "
                                         r"file \(4,\) vs network \(2,\)"):
        check_tensor_fit({"a": torch.ones(4), "b": torch.ones(3)}, ref, "w", "c")
