"""The work-item counter of a kernel that takes its items from one (version 9, TILE_COUNTER=1):
a trailing "counter" parameter, a pointer to WORDS uint32 words, zero when the launch starts.

The kernel sets the words back to zero when its last block is done taking items, so a word is
zero again for any launch ordered after it on a stream. Each launch still gets a word of its
own: two launches running at once (two streams) on one word would take each other's items.
* the harness path (harness/run/gpu.py) launches one variant at a time: a fresh zeroed word per
  launch spec (fresh()), kept alive by the argument tuple that every launch of that spec reuses;
* the product path (harness/api.py) may be called from many streams at once: each launch takes
  the next word of a per-device ring of RING_SLOTS words (Ring.take(), no GPU work per call), so
  two launches share a word only when RING_SLOTS launches apart; a launch being captured into a
  CUDA graph takes a word from the caller's allocator instead (the graph's own memory), because
  a graph may be replayed beside any later launch.
"""

from __future__ import annotations

import threading

PARAM = "counter"          # its name in a registry entry's trailing_params
WORDS = 2                  # [0] the next item, [1] the blocks that found none left
RING_SLOTS = 1024          # words a device's ring hands out in turn (8 KiB)


def takes_counter(entry) -> bool:
    return PARAM in entry.trailing_params


def fresh(cp):
    """A zeroed word for one launch spec of the harness path (a CuPy array: pass it as is)."""
    return cp.zeros(WORDS, dtype=cp.uint32)


class Ring:
    """RING_SLOTS zeroed words on the current device; take() gives the next one's address."""

    def __init__(self, cp):
        self._buf = cp.zeros(RING_SLOTS * WORDS, dtype=cp.uint32)
        cp.cuda.Device().synchronize()     # zero before any stream's launch reads it
        self._base = int(self._buf.data.ptr)
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            i = self._next
            self._next = (i + 1) % RING_SLOTS
        return self._base + i * WORDS * 4


_RINGS: dict = {}          # device -> Ring, for the process's life (a launch may still hold a word)
_RINGS_LOCK = threading.Lock()


def ring(cp, device: int) -> Ring:
    """The device's ring (made on first use, with that device current)."""
    with _RINGS_LOCK:
        if device not in _RINGS:
            with cp.cuda.Device(device):
                _RINGS[device] = Ring(cp)
        return _RINGS[device]
