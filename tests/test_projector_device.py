"""The matrix-free projector's GPU path, checked on the CPU.

CUDA inputs run the chunked torch kernels (``RayTracingProjector._use_numba`` is false for every
non-CPU device).  Oracles, without a GPU: that choice itself; the torch kernels against the numba
kernels (which the CPU uses by default) on a 3D reference geometry within float32 tolerance; and
that the torch path never copies a tensor to numpy (``Tensor.numpy`` raises for a CUDA tensor),
returns its result on the input's device and dtype, and keeps its gradient.  On a machine with a
GPU, ``test_projector_matrixfree.py::test_matrix_free_cuda_matches_cpu`` runs it there.
"""

from __future__ import annotations

import pytest
import torch

from sirf_diffusion.physics import raytrace_numba
from sirf_diffusion.physics.geometry import ImageGeometry, SinogramGeometry, get_scanner
from sirf_diffusion.physics.projector import RayTracingProjector

VX = 2.0862600803375244
#: the span-3, view-mashed STIR reference geometry (test_stir_reference_projections.py)
SPAN3_MASH2 = (SinogramGeometry(get_scanner("mMR").with_rings(8), 126, span=3,
                                max_ring_difference=4),
               ImageGeometry((15, 128, 128), (2.03125, VX, VX)))
needs_numba = pytest.mark.skipif(not raytrace_numba.available(), reason="numba is not installed")


def _rand(shape, seed, dtype=torch.float32):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("kernels", ["auto", "torch",
                                     pytest.param("numba", marks=needs_numba)])
def test_cuda_inputs_take_the_torch_kernels(kernels):
    P = RayTracingProjector(*SPAN3_MASH2, mode="matrix-free", kernels=kernels)
    for device in ("cuda", "cuda:1", "mps"):
        assert not P._use_numba(torch.device(device))
    cpu = kernels != "torch" and raytrace_numba.available()
    assert P._use_numba(torch.device("cpu")) is cpu


@needs_numba
def test_torch_kernels_equal_numba_in_float32_on_a_3d_reference_geometry():
    numba = RayTracingProjector(*SPAN3_MASH2, mode="matrix-free", kernels="numba")
    torch_path = RayTracingProjector(*SPAN3_MASH2, mode="matrix-free", kernels="torch",
                                     chunk_bytes=32 * 2 ** 20)
    torch_path._elements = numba.elements()          # trace once for both (same numbers)
    x = _rand(numba.image_shape, 1)
    y = _rand(numba.data_shape, 2)
    assert _rel_l2(torch_path.forward(x), numba.forward(x)) < 1e-5
    assert _rel_l2(torch_path.adjoint(y), numba.adjoint(y)) < 1e-5
    views = torch.tensor([40, 3, 77, 10])                     # an unsorted subset
    ys = y[:, views]
    assert _rel_l2(torch_path.forward(x, views), numba.forward(x, views)) < 1e-5
    assert _rel_l2(torch_path.adjoint(ys, views), numba.adjoint(ys, views)) < 1e-5


def test_the_torch_path_stays_on_the_input_device(monkeypatch):
    sg = SinogramGeometry(get_scanner("mMR").with_rings(4), 21, span=1, max_ring_difference=2)
    P = RayTracingProjector(sg, ImageGeometry((7, 32, 32), (2.03125, VX, VX)),
                            mode="matrix-free", kernels="torch", chunk_bytes=2 ** 20)
    P.elements()                                  # the ray tracing itself runs on the CPU
    x = _rand((2, *P.image_shape), 3, torch.float64).requires_grad_(True)
    w = _rand((2, *P.data_shape), 4, torch.float64)

    def no_numpy(self, *args, **kwargs):
        raise AssertionError("the torch path copied a tensor to numpy (fails on CUDA)")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)
    y = P.forward(x)
    z = P.adjoint(w[..., [2, 0, 5], :], torch.tensor([2, 0, 5]))
    (y * w).sum().backward()
    for t in (y, z, x.grad):
        assert (t.device, t.dtype) == (x.device, x.dtype)
    monkeypatch.undo()
    lhs, rhs = float((y.detach() * w).sum()), float((x.detach() * P.adjoint(w)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    torch.testing.assert_close(x.grad, P.adjoint(w), rtol=1e-12, atol=1e-12)
