"""The array module of the arrays at hand: NumPy on the host, CuPy on the device.

The references are NumPy code (the specification, docs/DESIGN.md §3) and run unchanged on
the GPU through CuPy's NumPy-compatible API. This layer never imports CuPy (the layer
contract in pyproject.toml): it takes the module from the arrays it is handed. An array
whose type lives in cupy can only exist once cupy is imported, so sys.modules has it.
"""

from __future__ import annotations

import sys

import numpy as np


def array_module(*arrays):
    """cupy if any argument is a CuPy array, else numpy (scalars and None are ignored)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            return sys.modules["cupy"]
    return np


def on_device(a) -> bool:
    return array_module(a) is not np


def to_host(a) -> np.ndarray:
    """A NumPy copy of a device array; host arrays pass through."""
    return a.get() if on_device(a) else np.asarray(a)
