"""Registry of the debug modes and the seeded bugs (docs/DESIGN.md: one stage in isolation)."""

from .bugs import BUGS, Bug
from .hopper_bugs import HOPPER_BUGS
from .registry import DATAFLOW_ORDER, MODES, Buffer, Mode, get_mode

# Every seeded bug of every registry kernel, by name (no name is shared between kernels).
ALL_BUGS = {**BUGS, **HOPPER_BUGS}


def bugs_of(entry) -> dict:
    """The seeded bugs a registry entry (kernels/registry.py) implements: the ones its
    seeded_bugs names, or flashcore_fused's table where it names none."""
    if entry.seeded_bugs is None:
        return BUGS
    return {n: ALL_BUGS[n] for n in entry.seeded_bugs}


__all__ = ["ALL_BUGS", "BUGS", "Bug", "DATAFLOW_ORDER", "HOPPER_BUGS", "MODES", "Buffer", "Mode", "bugs_of", "get_mode"]
