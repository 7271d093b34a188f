"""One kernel launch with its arguments packed once: the product path's launch (forward()).

Why not CuPy's call: RawKernel(grid, block, args) converts every argument to a C value on every
launch (17 of them here) and looks the device's function up again. Measured on the H200 by
scripts/profile_forward.py, host time per call: CuPy's call 9-15 us, cuLaunchKernel over a
block packed once 4.6-6.5 us (docs/DESIGN.md §9, "The product path").

The block is cuLaunchKernel's kernelParams: an array of addresses, one per parameter, each
pointing at a slot that holds the value (a pointer, or an int32/float32 in an 8-byte slot's
first bytes: the driver reads as many bytes as the parameter has; a 128-byte TMA tensor map in a
128-byte-aligned slot of its own). The slots are written once from the launch's argument tuple;
a call then writes only the first `n_ptrs` slots (the pointers that change per call), when it
changes, one float32 slot (the scale), and, for a kernel that takes TMA maps (the sm_90a one),
re-encodes in place the map of each pointer that differs from the last call's (a map holds its
tensor's address; a loop over the same buffers encodes nothing), and, for a kernel that takes a
work-item counter (version 9), writes the call's own counter word into its slot.

The driver call releases the GIL, so one block is guarded by a lock from the write to the
launch: two threads launching one plan never mix their pointers.
"""

from __future__ import annotations

import ctypes
import struct
import threading

import numpy as np

SLOT = 8                             # bytes of a pointer or scalar slot
MAP_BYTES = 128                      # a CUtensorMap (kernels/hopper/ptx.cuh's TmaDesc), 128-byte aligned
CUDA_ERROR_INVALID_CONTEXT = 201     # a thread that never used the device has no current context


def _encode(value) -> bytes:
    """A Python int is a pointer (8 bytes); a NumPy scalar is its own C type; a 128-byte NumPy
    value (a TMA map, harness/toolchain/tma.py) is its bytes."""
    if isinstance(value, (int, np.uint64)) and not isinstance(value, bool):
        return struct.pack("<Q", int(value))
    if isinstance(value, np.generic) and value.nbytes <= SLOT:
        return value.tobytes()
    if isinstance(value, (np.ndarray, np.void)) and value.nbytes == MAP_BYTES:
        return value.tobytes()
    raise TypeError(f"kernel argument {value!r}: pass a pointer (int), a NumPy scalar or a 128-byte TMA map")


def _size(value) -> int:
    return MAP_BYTES if isinstance(value, (np.ndarray, np.void)) else SLOT


class Launcher:
    """fn's launch at one geometry; args is the launch's whole argument tuple (its first n_ptrs
    entries are placeholders that every call overwrites; args[float_slot] is a np.float32).
    maps: (argument index, pointer index, encoder) per TMA map argument: the map of the call's
    pointer ptrs[pointer index], written by encoder.encode_into(address, pointer)
    (tma.TiledMap) whenever that pointer changes. counter_slot: the argument index of a
    work-item counter pointer, which every call passes (harness/toolchain/counter.py)."""

    def __init__(self, fn, grid: tuple, block: tuple, smem: int, args: tuple, n_ptrs: int, float_slot: int,
                 maps: tuple = (), counter_slot: int | None = None):
        if not isinstance(args[float_slot], np.float32):
            raise TypeError(f"argument {float_slot} is {args[float_slot]!r}, not the float32 a call may rewrite")
        self.fn = fn                          # a compiled cupy RawKernel (resolved per device on first use)
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.block = tuple(block) + (1,) * (3 - len(block))
        self.smem = int(smem)
        self.types = tuple(("ptr" if isinstance(a, int) else "map" if _size(a) == MAP_BYTES else np.asarray(a).dtype.str)
                           for a in args)
        if any(t != "ptr" for t in self.types[:n_ptrs]):
            raise TypeError(f"the first {n_ptrs} arguments must be the pointers a call rewrites")
        # slot offsets: each slot aligned to its own size (8, or 128 for a map)
        self._offsets, off = [], 0
        for a in args:
            size = _size(a)
            off = -(-off // size) * size
            self._offsets.append(off)
            off += size
        self._slots = (ctypes.c_uint8 * (off + MAP_BYTES))()
        self._base = -ctypes.addressof(self._slots) % MAP_BYTES   # the block's start, 128-byte aligned
        base = ctypes.addressof(self._slots) + self._base
        for a, o in zip(args, self._offsets):
            raw = _encode(a)
            ctypes.memmove(base + o, raw, len(raw))
        n = len(args)
        self._params = (ctypes.c_void_p * n)(*(base + o for o in self._offsets))
        self._params_ptr = ctypes.addressof(self._params)
        self._ptr_fmt = f"<{n_ptrs}Q"
        self._float_offset = self._base + self._offsets[float_slot]
        self._float = float(args[float_slot])
        self._maps = tuple((base + self._offsets[i], p, enc) for i, p, enc in maps)
        if counter_slot is not None and self.types[counter_slot] != "ptr":
            raise TypeError(f"argument {counter_slot} is {args[counter_slot]!r}, not the counter pointer a call writes")
        self._counter = None if counter_slot is None else self._base + self._offsets[counter_slot]
        self._mapped = [None] * len(self._maps)   # the pointer each map holds now
        self._lock = threading.Lock()
        self._function = None                 # the driver's handle, on first launch

    def _write(self, ptrs: tuple, value: float, counter: int = 0):
        struct.pack_into(self._ptr_fmt, self._slots, self._base, *ptrs)
        if self._counter is not None:
            if not counter:
                raise ValueError("this kernel takes a work-item counter: pass the call's word")
            struct.pack_into("<Q", self._slots, self._counter, counter)
        if value != self._float:
            struct.pack_into("<f", self._slots, self._float_offset, value)
            self._float = value
        for j, (addr, p, enc) in enumerate(self._maps):
            if ptrs[p] != self._mapped[j]:
                self._mapped[j] = None        # an encode that raises leaves no stale claim
                enc.encode_into(addr, ptrs[p])
                self._mapped[j] = ptrs[p]

    def values(self, ptrs: tuple, value: float, counter: int = 0) -> tuple:
        """The arguments a launch with these pointers and float (and counter word) would pass,
        read back from the block as the driver reads it (for tests; writes the block like a
        launch). A map reads back as its 128 bytes."""
        with self._lock:
            self._write(ptrs, value, counter)
            raw = bytes(self._slots)[self._base:]
        out = []
        for o, t in zip(self._offsets, self.types):
            if t == "map":
                out.append(raw[o:o + MAP_BYTES])
                continue
            slot = raw[o:o + SLOT]
            out.append(struct.unpack("<Q", slot)[0] if t == "ptr" else np.frombuffer(slot, t, count=1)[0])
        return tuple(out)

    def __call__(self, ptrs: tuple, value: float, stream: int, counter: int = 0):
        """Launch on the stream (a raw CUDA stream pointer) with these pointers and float, and,
        for a kernel that takes one, this call's counter word (an address)."""
        with self._lock:
            self._write(ptrs, value, counter)
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
