"""Windows of query rows: which rows the modes with [rows, keys] matrices check
(docs/DESIGN.md §7).

A window is (row0, n_rows): the kernel computes and stores rows [row0, row0 + n_rows), row0 a
multiple of BLOCK_M, and the debug matrices hold exactly those rows. The whole problem is one
window while its matrices are small; past that the harness checks three query tiles, each
against every key tile (the tail included):
  the first   under causal masking it sees the fewest keys (mostly masked columns);
  a middle    a full sweep, neither edge;
  the last    the query tail and, causal or not, the whole key range.
Rows are independent in every stage, and full's O and LSE (the same code with the glue) are
always checked whole, so three tiles keep every stage's check while bounding its memory.
`--rows all` or a list of query tiles asks for more.
"""

from __future__ import annotations

import numpy as np

from harness.errors import UsageError

# One [B, H, rows, Skp] fp32 matrix up to this size: the whole problem is one window.
WHOLE_WINDOW_BYTES = 512 << 20
# The most the checked rows of one matrix may take, however they were asked for: the
# references and metrics keep about 15 float64-sized copies of it alive on the device.
MAX_CHECKED_BYTES = 2 << 30


def parse_rows(text):
    """--rows: None or '' (default), 'all', or query-tile indices '0,5,-1' (negative from
    the end). Returns None, 'all' or a tuple of ints."""
    if text is None or str(text).strip() in ("", "default"):
        return None
    text = str(text).strip()
    if text == "all":
        return "all"
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"--rows {text!r}: expected all or query-tile indices such as 0,5,-1") from None


def n_tiles(Sq: int, block_m: int) -> int:
    return -(-Sq // block_m)


def tile_window(tile: int, Sq: int, block_m: int) -> tuple:
    """Query tile t as a window; the last one ends at Sq (the tail), so no row of its
    buffer goes unwritten."""
    row0 = tile * block_m
    return row0, min(block_m, Sq - row0)


def merge(windows) -> list:
    """Sorted windows with adjacent or overlapping ones joined: fewer launches, same rows."""
    out = []
    for row0, n in sorted(windows):
        if out and row0 <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], row0 + n)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((row0, n))
    return out


def default_tiles(Sq: int, block_m: int) -> tuple:
    """The first, a middle and the last query tile."""
    n = n_tiles(Sq, block_m)
    return tuple(sorted({0, n // 2, n - 1}))


def plan(Sq: int, block_m: int, row_bytes: int, request=None, shape_label: str = "") -> list:
    """The windows [(row0, n_rows)] to check. row_bytes: bytes of one query row of the
    largest [B, H, rows, Skp] matrix the mode reads or writes. request: parse_rows' value."""
    n = n_tiles(Sq, block_m)
    if request is None:
        if Sq * row_bytes <= WHOLE_WINDOW_BYTES:
            return [(0, Sq)]
        tiles = default_tiles(Sq, block_m)
    elif request == "all":
        tiles = tuple(range(n))
    else:
        bad = [t for t in request if not -n <= t < n]
        if bad:
            raise UsageError(f"--rows: query tile {bad[0]} out of range: {shape_label} has {n} query tiles "
                             f"of {block_m} rows (0..{n - 1}, or -1 for the last)")
        tiles = tuple(sorted({t % n for t in request}))
    windows = merge(tile_window(t, Sq, block_m) for t in tiles)
    checked = sum(w for _, w in windows) * row_bytes
    if checked > MAX_CHECKED_BYTES and request is None:
        raise UsageError(f"{shape_label}: even three query tiles need {checked / 2**30:.1f} GiB per [rows, keys] "
                         f"matrix, over the {MAX_CHECKED_BYTES / 2**30:.0f} GiB limit: use fewer heads or keys")
    if checked > MAX_CHECKED_BYTES:
        per_tile = max(1, MAX_CHECKED_BYTES // (block_m * row_bytes))
        raise UsageError(f"--rows {'all' if request == 'all' else ','.join(map(str, tiles))} on {shape_label} "
                         f"needs {checked / 2**30:.1f} GiB per [rows, keys] matrix, over the "
                         f"{MAX_CHECKED_BYTES / 2**30:.0f} GiB limit: ask for at most {per_tile} query tiles "
                         f"(of {n}, {block_m} rows each), e.g. --rows 0,{n // 2},-1")
    return windows


def row_index(windows) -> np.ndarray:
    """The absolute query rows of the windows, in the order their results are stacked."""
    return np.concatenate([np.arange(r0, r0 + n) for r0, n in windows])


def ranges(windows) -> list:
    """[(row0, row_end)] of the windows (what the run record and the folds carry)."""
    return [(int(r0), int(r0 + n)) for r0, n in windows]


def describe(row_ranges, Sq: int) -> str:
    """'all' or '0-127,8128-8255,16256-16383' (inclusive row ranges)."""
    if row_ranges is None or list(map(tuple, row_ranges)) == [(0, Sq)]:
        return "all"
    return ",".join(f"{a}-{b - 1}" for a, b in row_ranges)
