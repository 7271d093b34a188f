"""One kernel launch with its arguments packed once: the product path's launch (forward()).

Why not CuPy's call: RawKernel(grid, block, args) converts every argument to a C value on every
launch (17 of them here) and looks the device's function up again. Measured on the H200 by
scripts/profile_forward.py, host time per call: CuPy's call 9-15 us, cuLaunchKernel over a
block packed once 4.6-6.5 us (docs/DESIGN.md §9, "The product path").

The block is cuLaunchKernel's kernelParams: an array of addresses, one per parameter, each
pointing at an 8-byte slot that holds the value (a pointer, or an int32/float32 in the slot's
first bytes: the driver reads as many bytes as the parameter has). The slots are written once
from the launch's argument tuple; a call then writes only the first `n_ptrs` slots (the
pointers that change per call) and, when it changes, one float32 slot (the scale).

The driver call releases the GIL, so one block is guarded by a lock from the write to the
launch: two threads launching one plan never mix their pointers.
"""

from __future__ import annotations

import ctypes
import struct
import threading

import numpy as np

SLOT = 8                             # bytes per argument slot
CUDA_ERROR_INVALID_CONTEXT = 201     # a thread that never used the device has no current context


def _encode(value) -> bytes:
    """A Python int is a pointer (8 bytes); a NumPy scalar is its own C type."""
    if isinstance(value, (int, np.uint64)) and not isinstance(value, bool):
        return struct.pack("<Q", int(value))
    if isinstance(value, np.generic) and value.nbytes <= SLOT:
        return value.tobytes()
    raise TypeError(f"kernel argument {value!r}: pass a pointer (int) or a NumPy scalar")


class Launcher:
    """fn's launch at one geometry; args is the launch's whole argument tuple (its first n_ptrs
    entries are placeholders that every call overwrites; args[float_slot] is a np.float32)."""

    def __init__(self, fn, grid: tuple, block: tuple, smem: int, args: tuple, n_ptrs: int, float_slot: int):
        if not isinstance(args[float_slot], np.float32):
            raise TypeError(f"argument {float_slot} is {args[float_slot]!r}, not the float32 a call may rewrite")
        self.fn = fn                          # a compiled cupy RawKernel (resolved per device on first use)
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.block = tuple(block) + (1,) * (3 - len(block))
        self.smem = int(smem)
        self.types = tuple(("ptr" if isinstance(a, int) else np.asarray(a).dtype.str) for a in args)
        n = len(args)
        self._slots = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._slots)
        for i, a in enumerate(args):
            raw = _encode(a)
            ctypes.memmove(base + SLOT * i, raw, len(raw))
        self._params = (ctypes.c_void_p * n)(*(base + SLOT * i for i in range(n)))
        self._params_ptr = ctypes.addressof(self._params)
        self._ptr_fmt = f"<{n_ptrs}Q"
        self._float_offset = SLOT * float_slot
        self._float = float(args[float_slot])
        self._lock = threading.Lock()
        self._function = None                 # the driver's function handle, on first launch

    def _write(self, ptrs: tuple, value: float):
        struct.pack_into(self._ptr_fmt, self._slots, 0, *ptrs)
        if value != self._float:
            struct.pack_into("<f", self._slots, self._float_offset, value)
            self._float = value

    def values(self, ptrs: tuple, value: float) -> tuple:
        """The arguments a launch with these pointers and float would pass, read back from the
        block as the driver reads it (for tests; writes the block like a launch)."""
        with self._lock:
            self._write(ptrs, value)
            raw = bytes(self._slots)
        out = []
        for i, t in enumerate(self.types):
            slot = raw[SLOT * i:SLOT * (i + 1)]
            out.append(struct.unpack("<Q", slot)[0] if t == "ptr" else np.frombuffer(slot, t, count=1)[0])
        return tuple(out)

    def __call__(self, ptrs: tuple, value: float, stream: int):
        """Launch on the stream (a raw CUDA stream pointer) with these pointers and float."""
        with self._lock:
            self._write(ptrs, value)
            if self._function is None:
                self._resolve()
            try:
                self._launch(self._function, *self.grid, *self.block, self.smem, stream, self._params_ptr, 0)
            except self._driver.CUDADriverError as e:
                if e.status != CUDA_ERROR_INVALID_CONTEXT:
                    raise
                self._runtime.memGetInfo()    # makes the device's primary context current on this thread
                self._launch(self._function, *self.grid, *self.block, self.smem, stream, self._params_ptr, 0)

    def _resolve(self):
        """The driver's handle of fn on the current device (the caller's plan device), once."""
        from cupy_backends.cuda.api import driver, runtime
        self._driver, self._runtime, self._launch = driver, runtime, driver.launchKernel
        self._kernel = self.fn.kernel         # keeps CuPy's Function (and its module) alive
        self._function = self._kernel.ptr
