"""Registry of the debug modes and the seeded bugs (docs/DESIGN.md: one stage in isolation)."""

from .bugs import BUGS, Bug
from .registry import DATAFLOW_ORDER, MODES, Buffer, Mode, get_mode

__all__ = ["BUGS", "Bug", "DATAFLOW_ORDER", "MODES", "Buffer", "Mode", "get_mode"]
