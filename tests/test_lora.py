"""LoRA adapters (sirf_diffusion.diffusion.lora): identity at initialisation, exact merge and
unmerge, gradients only for the adapters, save/load with the base weights' hash."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomise_parameters, tiny_score_model
from torch import nn

from sirf_diffusion.diffusion.lora import (
    LoRALayer,
    base_weights_sha256,
    block_downsampling,
    inject_lora,
    load_lora,
    lowest_resolution_layers,
)
from sirf_diffusion.diffusion.unet import Attention, ResBlock


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1, 16, 16, generator=g), torch.tensor([0.3, 1.5])


def _nonzero_up(lora, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.layers.values():
            layer.up.weight.copy_(0.05 * torch.randn(layer.up.weight.shape, generator=g))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fresh_adapter_leaves_output_bit_identical(precision):
    model = tiny_score_model(precision=precision).eval()
    x, s = _inputs()
    with torch.no_grad():
        before = model(x, s)
    lora = inject_lora(model, rank=3)
    with torch.no_grad():
        after = model(x, s)
    assert torch.equal(before, after)
    # the adapters wrap every conv / linear layer of the residual and attention blocks
    blocks = [m for m in model.modules() if isinstance(m, (ResBlock, Attention))]
    expected = sum(isinstance(m, LoRALayer) for b in blocks for m in b.modules())
    assert len(lora.layers) == expected > 0
    assert not any(isinstance(m, LoRALayer) for m in model.unet.time_mlp.modules())
    assert all(isinstance(layer.base, (nn.Conv2d, nn.Linear)) for layer in lora.layers.values())


def test_adapter_changes_output_and_merge_unmerge_round_trip():
    model = tiny_score_model(precision="fp32").eval()
    x, s = _inputs()
    with torch.no_grad():
        base_out = model(x, s)
    originals = {k: v.clone() for k, v in model.state_dict().items()}
    lora = inject_lora(model, rank=2, alpha=4.0)
    _nonzero_up(lora)
    with torch.no_grad():
        adapted = model(x, s)
        assert not torch.allclose(adapted, base_out)
        lora.merge()
        merged = model(x, s)
        lora.unmerge()
        unmerged = model(x, s)
    # merged weights compute the same function (up to float32 rounding of W + BA)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unmerged, adapted, rtol=0, atol=0)
    # unmerging restores the base weights bit for bit
    for name, layer in lora.layers.items():
        key = f"{name}.weight"
        assert torch.equal(layer.base.weight, originals[key]), key


def test_merged_delta_is_the_low_rank_product_for_linear_layers():
    lin = randomise_parameters(nn.Linear(6, 5))
    layer = LoRALayer(lin, rank=2, alpha=3.0)
    with torch.no_grad():
        layer.up.weight.normal_()
    x = torch.randn(4, 6)
    expected = lin(x) + 1.5 * (x @ layer.down.weight.T) @ layer.up.weight.T
    torch.testing.assert_close(layer(x), expected)
    assert layer.delta().shape == lin.weight.shape


def test_only_adapter_parameters_receive_gradients():
    model = tiny_score_model(precision="bf16").eval()
    lora = inject_lora(model, rank=2)
    x, s = _inputs()
    model(x, s).square().sum().backward()
    adapter = {id(p) for p in lora.parameters()}
    for name, p in model.named_parameters():
        if id(p) in adapter:
            assert p.requires_grad and p.dtype == torch.float32
        else:
            assert not p.requires_grad and p.grad is None, name
    # a zero up-projection has a gradient, the down-projection none yet (B = 0)
    ups = [layer.up.weight.grad for layer in lora.layers.values()]
    assert all(g is not None for g in ups) and any(bool(g.abs().sum() > 0) for g in ups)


def test_save_load_round_trip_and_hash_check(tmp_path):
    model = tiny_score_model(precision="fp32").eval()
    pristine = copy.deepcopy(model)
    sha = base_weights_sha256(model)
    lora = inject_lora(model, rank=2, alpha=1.0)
    assert lora.base_sha256 == sha
    _nonzero_up(lora)
    path = lora.save(tmp_path / "adapter.safetensors")
    x, s = _inputs()
    with torch.no_grad():
        expected = model(x, s)
    fresh = copy.deepcopy(pristine)
    loaded = load_lora(path, fresh)
    assert (loaded.rank, loaded.alpha) == (2, 1.0)
    with torch.no_grad():
        assert torch.equal(fresh(x, s), expected)
    # the saved base model is untouched by the adapter
    assert base_weights_sha256(pristine) == sha
    # an adapter for other weights is refused, naming the file
    other = tiny_score_model(seed=5, precision="fp32").eval()
    with pytest.raises(ValueError, match="other base weights"):
        load_lora(path, other)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_lora(tmp_path / "missing.safetensors", other)


def test_hash_matches_the_model_file(tmp_path):
    """The base hash is the sha256 ``save_model`` writes into config.json."""
    import json

    from sirf_diffusion.diffusion import save_model

    model = tiny_score_model(precision="fp32").eval()
    save_model(tmp_path / "m", model)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert base_weights_sha256(model) == meta["weights"]["sha256"]


def test_bad_arguments():
    model = tiny_score_model().eval()
    with pytest.raises(ValueError, match="rank"):
        inject_lora(model, rank=0)
    with pytest.raises(ValueError, match="alpha"):
        inject_lora(model, rank=2, alpha=-1.0)
    with pytest.raises(ValueError, match="are not in"):
        inject_lora(model, rank=2, layers=["unet.nope"])
    inject_lora(model, rank=2)
    with pytest.raises(ValueError, match="already holds"):
        base_weights_sha256(model)


def test_lowest_resolution_layers_are_those_of_the_coarsest_blocks():
    """Tiny UNet, 2 levels: the encoder's second block, the middle and the decoder's first two
    blocks see half-resolution inputs; only their layers are chosen, and adapting them alone
    leaves the output bit-identical and trains only them."""
    model = tiny_score_model(seed=3).eval()
    factors = block_downsampling(model)
    assert set(factors.values()) == {1, 2}
    assert factors["unet.down.0.0"] == 1 and factors["unet.mid.1"] == 2
    assert factors["unet.up.0.0"] == 2 and factors["unet.up.2.0"] == 1
    deep = lowest_resolution_layers(model)
    coarse = [b for b, f in factors.items() if f == 2]
    assert deep and all(any(n.startswith(b + ".") for b in coarse) for n in deep)
    assert "unet.mid.1.qkv" in deep and "unet.down.0.0.conv1" not in deep
    # every conv/linear of the coarse blocks, no other layer
    named = dict(model.named_modules())
    for b in coarse:
        inner = [f"{b}.{n}" for n, m in named[b].named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert set(inner) <= set(deep)
    x, t = _inputs()
    with torch.no_grad():
        ref = model(x, t)
    lora = inject_lora(model, rank=2, layers=deep)
    assert sorted(lora.layers) == sorted(deep)
    with torch.no_grad():
        assert torch.equal(model(x, t), ref)
    _nonzero_up(lora)
    model(x, t).square().sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(n.rsplit(".", 2)[0] in deep for n in trained)
    with pytest.raises(ValueError, match="no UNet blocks"):
        lowest_resolution_layers(nn.Sequential(nn.Linear(2, 2)))
