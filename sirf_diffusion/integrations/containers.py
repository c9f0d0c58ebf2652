"""Conversions between image containers: numpy, torch, SIRF/CIL ``DataContainer`` and STIR images.

The learned priors work on torch tensors; SIRF/CIL scripts hold images in their own containers.
:func:`to_torch` crosses the boundary once and hands back a ``restore`` function that builds an
object of the *same type* as the input (a numpy array from a numpy array, a SIRF ``ImageData``
from a SIRF ``ImageData``...), so that every public function of :mod:`sirf_diffusion.integrations`
returns what it was given::

    t, restore = to_torch(image)        # t: torch.Tensor [..., z, y, x]
    grad = restore(some_tensor)         # same type, shape and dtype as ``image``
    restore(some_tensor, out=grad)      # fill an existing container (CIL ``out=`` convention)

Supported kinds (detected by duck typing, so nothing of SIRF, STIR or CIL is imported):

``"numpy"``
    ``numpy.ndarray``; zero-copy ``torch.from_numpy`` view where the dtype allows it.
``"torch"``
    ``torch.Tensor``; returned as is (cast / moved only when asked).
``"stir"``
    STIR Python images (``stir.FloatVoxelsOnCartesianGrid`` and other classes of the ``stir``
    SWIG module): read with ``as_array()`` (``[z, y, x]``, STIR's index order with its minimum
    indices removed), written into ``get_empty_copy()`` with ``fill(array.flat)``.
``"container"``
    SIRF ``ImageData`` / CIL ``DataContainer`` (anything with ``as_array()`` and ``fill()`` plus
    ``get_uniform_copy()`` or ``clone()``): read with the zero-copy ``asarray()`` where the
    class has it (recent SIRF), else ``as_array()``; written into ``get_uniform_copy(0)``
    (SIRF) or ``clone()`` (CIL) with ``fill(ndarray)``.

SIRF and STIR images are ``(z, y, x)`` float32 arrays; CIL ``ImageData`` follow their geometry's
dimension labels (``('vertical', 'horizontal_y', 'horizontal_x')`` for 3D, two axes for 2D).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import torch

__all__ = ["ContainerKind", "Restore", "container_kind", "to_torch", "to_numpy", "like",
           "coerce_image", "is_stir_image", "is_data_container", "float32_values",
           "float32_tensor"]

ContainerKind = Literal["numpy", "torch", "stir", "container"]


class Restore(Protocol):
    """``restore(tensor, out=None)``: the same kind of object as the converted input."""

    def __call__(self, tensor: torch.Tensor | np.ndarray, out: Any = None) -> Any: ...


_FLOATS_NP = (np.float16, np.float32, np.float64)
_FLOATS_TORCH = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_stir_image(obj: Any) -> bool:
    """Whether ``obj`` is an object of STIR's SWIG module with ``as_array`` and ``fill``."""
    module = type(obj).__module__ or ""
    return (module == "stir" or module.startswith("stir.") or module.startswith("_stir")) and \
        hasattr(obj, "as_array") and hasattr(obj, "fill")


def is_data_container(obj: Any) -> bool:
    """Whether ``obj`` looks like a SIRF ``ImageData`` or CIL ``DataContainer`` (duck typing)."""
    return (hasattr(obj, "as_array") and hasattr(obj, "fill")
            and (hasattr(obj, "get_uniform_copy") or hasattr(obj, "clone")))


def container_kind(obj: Any) -> ContainerKind:
    """``'numpy'``, ``'torch'``, ``'stir'`` or ``'container'`` (module docstring).

    Raises
    ------
    TypeError
        For anything else (lists, scalars, acquisition data without ``fill``...).
    """
    if isinstance(obj, torch.Tensor):
        return "torch"
    if isinstance(obj, np.ndarray):
        return "numpy"
    if is_stir_image(obj):
        return "stir"
    if is_data_container(obj):
        return "container"
    raise TypeError(
        f"unsupported image type {type(obj).__module__}.{type(obj).__qualname__}: expected a "
        "numpy array, a torch tensor, a SIRF/CIL image (as_array, fill, clone/get_uniform_copy) "
        "or a STIR image")


def _read_array(obj: Any, kind: ContainerKind) -> np.ndarray:
    """The voxel values of a SIRF/CIL/STIR image as a numpy array (a view where possible)."""
    if kind == "container" and hasattr(obj, "asarray"):
        # recent SIRF (``ArrayContainer.asarray(xp=numpy, copy=None)``): a zero-copy view of the
        # C++ data; ``copy=False`` raises when no view is possible, then view-or-copy, then
        # ``as_array`` below
        arr = None
        for kwargs in ({"copy": False}, {}):
            try:
                arr = obj.asarray(**kwargs)
                break
            except (TypeError, ValueError):
                continue
        if isinstance(arr, np.ndarray):
            return arr
    arr = obj.as_array()
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    return arr


def to_numpy(obj: Any) -> np.ndarray:
    """Voxel values of any supported image as a numpy array (a view where possible).

    Torch tensors are detached and moved to the CPU; SIRF/CIL/STIR images are read as in
    :func:`to_torch`.  Do not write into the result: it may share memory with ``obj``.
    """
    kind = container_kind(obj)
    if kind == "torch":
        return obj.detach().cpu().numpy()
    if kind == "numpy":
        return obj
    return _read_array(obj, kind)


def _as_numpy_out(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def float32_values(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """``values`` (tensor, on any device, or array) as a C-contiguous float32 numpy array: what
    the toolkits' ``fill`` takes (SIRF/CIL the array, STIR its ``.flat`` iterator)."""
    return np.ascontiguousarray(_as_numpy_out(values), dtype=np.float32)


def float32_tensor(values: Any, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """A toolkit's array (e.g. ``as_array()``) as a tensor of its own: copied through float32
    (the toolkits' precision), then cast to ``dtype`` on ``device``."""
    return torch.from_numpy(np.array(values, dtype=np.float32)).to(dtype=dtype, device=device)


def to_torch(obj: Any, *, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, Restore]:
    """A torch view/copy of ``obj`` and the function that converts results back to its type.

    Parameters
    ----------
    obj
        numpy array, torch tensor, SIRF/CIL image or STIR image (module docstring).
    dtype
        Dtype of the returned tensor; ``None`` keeps a floating dtype of numpy/torch inputs and
        uses float32 otherwise (integer arrays, SIRF/STIR images).
    device
        Device of the returned tensor (``None``: the tensor's own device, CPU for the rest).

    Returns
    -------
    tensor
        The values, shape of ``obj`` (``(z, y, x)`` for SIRF/STIR images).  It may share memory
        with ``obj``: callers must not modify it in place.
    restore
        ``restore(t, out=None)`` builds from a tensor (or array) of the same shape an object of
        the kind, shape and dtype of ``obj`` (SIRF/CIL/STIR: with its geometry); with ``out``
        (an object of the same kind) it fills ``out`` instead and returns it.

    Raises
    ------
    TypeError
        For unsupported types (:func:`container_kind`) or non-real data.
    """
    kind = container_kind(obj)
    if kind == "torch":
        src_dtype, src_device = obj.dtype, obj.device
        if src_dtype.is_complex:
            raise TypeError(f"complex tensors are not images of activity (dtype {src_dtype})")
        tgt = dtype or (src_dtype if src_dtype in _FLOATS_TORCH else torch.float32)
        tensor = obj.detach().to(dtype=tgt, device=device or src_device)
        shape = tuple(obj.shape)

        def restore_torch(t: torch.Tensor | np.ndarray, out: Any = None) -> torch.Tensor:
            r = torch.as_tensor(t).detach().to(dtype=src_dtype, device=src_device)
            _check_same_shape(tuple(r.shape), shape)
            if out is None:
                return r
            if not isinstance(out, torch.Tensor):
                raise TypeError("out must be a torch.Tensor like the input, got "
                                f"{type(out).__name__}")
            out.copy_(r)
            return out

        return tensor, restore_torch

    if kind == "numpy":
        arr = obj
    else:
        arr = _read_array(obj, kind)
    if np.iscomplexobj(arr):
        raise TypeError(f"complex images are not images of activity (dtype {arr.dtype})")
    shape = tuple(arr.shape)
    src_np_dtype = arr.dtype if kind == "numpy" else np.dtype(np.float32)
    tgt = dtype or (torch.from_numpy(np.empty(0, dtype=arr.dtype)).dtype
                    if arr.dtype in _FLOATS_NP else torch.float32)
    if arr.dtype.byteorder not in ("=", "|") or not arr.flags.aligned:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).to(dtype=tgt, device=device)

    if kind == "numpy":
        def restore_numpy(t: torch.Tensor | np.ndarray, out: Any = None) -> np.ndarray:
            r = _as_numpy_out(t).astype(src_np_dtype, copy=False)
            _check_same_shape(r.shape, shape)
            if out is None:
                return r
            if not isinstance(out, np.ndarray):
                raise TypeError("out must be a numpy array like the input, got "
                                f"{type(out).__name__}")
            np.copyto(out, r, casting="same_kind")
            return out

        return tensor, restore_numpy

    template = obj

    def restore_image(t: torch.Tensor | np.ndarray, out: Any = None) -> Any:
        r = float32_values(t)
        _check_same_shape(r.shape, shape)
        if out is None:
            out = _empty_like(template, kind)
        elif container_kind(out) != kind:
            raise TypeError(f"out must be an image of the input's kind ({kind}), got "
                            f"{type(out).__name__}")
        _fill(out, r, kind)
        return out

    return tensor, restore_image


def like(template: Any, values: torch.Tensor | np.ndarray, out: Any = None) -> Any:
    """``values`` as an object of the kind, shape and dtype of ``template`` (or written into
    ``out``); shorthand for ``to_torch(template)[1](values, out)``."""
    return to_torch(template)[1](values, out=out)


def _check_same_shape(got: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(got) != tuple(expected):
        raise ValueError(f"cannot restore values of shape {tuple(got)} into an image of shape "
                         f"{tuple(expected)}")


def _empty_like(template: Any, kind: ContainerKind) -> Any:
    if kind == "stir":
        return template.get_empty_copy()
    if hasattr(template, "get_uniform_copy"):  # SIRF
        return template.get_uniform_copy(0.0)
    return template.clone()  # CIL


def _fill(out: Any, values: np.ndarray, kind: ContainerKind) -> None:
    if kind == "stir":
        out.fill(values.flat)  # STIR's SWIG fill takes an iterator over the C-ordered values
    else:
        out.fill(values)


def coerce_image(obj: Any, name: str = "image") -> tuple[torch.Tensor, Restore]:
    """:func:`to_torch` with a readable error naming ``name`` (used by the public classes)."""
    try:
        return to_torch(obj)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None

