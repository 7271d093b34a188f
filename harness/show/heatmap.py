"""Terminal (rich) and PNG (matplotlib, optional extra) heat maps of the localisation folds."""

from __future__ import annotations

import numpy as np
from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from harness.errors import UsageError
from harness.check.localise import Folds

# error / tol buckets -> background colour
# error / tol buckets -> colour and a glyph (the glyph keeps the map readable without colour)
BUCKETS = [(1.0, "green", "·"), (10.0, "yellow", "░"), (100.0, "dark_orange", "▒"), (1e4, "red", "▓"),
           (np.inf, "magenta", "█")]
MAX_ROWS, MAX_COLS = 32, 48


NOT_CHECKED = ("grey50", "  ")    # cells of rows outside the checked windows (NaN in the folds)


def _pool(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Max-pool a 2-D map down to at most rows x cols cells; NaN (not checked) is ignored
    unless a pooled cell holds nothing else."""
    fr, fc = -(-a.shape[0] // rows), -(-a.shape[1] // cols)
    pr, pc = -a.shape[0] % fr, -a.shape[1] % fc
    a = np.pad(a.astype(float), ((0, pr), (0, pc)), constant_values=np.nan)
    blocks = a.reshape(a.shape[0] // fr, fr, a.shape[1] // fc, fc)
    return np.fmax.reduce(np.fmax.reduce(blocks, axis=3), axis=1)


def _cell(v: float) -> tuple:
    if np.isnan(v):
        return NOT_CHECKED
    for limit, colour, glyph in BUCKETS:
        if v <= limit:
            return colour, glyph
    return BUCKETS[-1][1:]


def render(a: np.ndarray, title: str, row_label: str, col_label: str) -> Panel:
    a = np.atleast_2d(a)
    pooled = _pool(a, MAX_ROWS, MAX_COLS)
    note = "" if pooled.shape == a.shape else f" (max-pooled from {a.shape[0]}x{a.shape[1]})"
    t = Text()
    for r in range(pooled.shape[0]):
        t.append(f"{r:>3} ")
        for v in pooled[r]:
            colour, glyph = _cell(v)
            t.append(glyph * 2, style=colour)
        t.append("\n")
    worst = np.nanmax(a) if np.isfinite(a).any() else float("nan")
    t.append(f"    rows: {row_label}; cols: {col_label}{note}; worst {worst:.3g}x tol", style="dim")
    return Panel(t, title=Text(title), expand=False)   # Text: no emoji/markup in titles


def legend() -> Text:
    t = Text("error/tol: ")
    lo = 0.0
    for limit, colour, glyph in BUCKETS:
        t.append(glyph * 2, style=colour)
        t.append(f" {'<=' + format(limit, 'g') if np.isfinite(limit) else '>' + format(lo, 'g')}  ")
        lo = limit
    t.append(f"{NOT_CHECKED[1]}", style=f"on {NOT_CHECKED[0]}")
    t.append(" rows not checked")
    return t


def _key_label(f: Folds) -> str:
    """The key-tile axis, naming the tail tile when the last tile is partial."""
    n = len(f.key_tiles)
    if f.key_tail:
        return f"key tile (0-{n - 1}; {n - 1} = tail: {f.key_tail} of {f.col_tile} keys valid)"
    return f"key tile (0-{n - 1}, no tail)"


def _panels(f: Folds) -> list:
    """(title, 2-D map, row label, column label) of every fold of one output."""
    col = "key tile" if f.key_tiles is not None else "head-dim tile (16)"
    q_note = f"query tile (rows {f.row_ranges_text})" if f.row_ranges_text else "query tile"
    out = [(f"{f.output}: query tile x {col}", f.tiles, q_note, col),
           (f"{f.output}: warp", f.warps[None, :], "-", "warp"),
           (f"{f.output}: 16x16 fragment position", f.fragment, "row % 16", "col % 16")]
    if f.key_tiles is not None:
        out.append((f"{f.output}: key tile index" + (" (last = tail)" if f.key_tail else ""), f.key_tiles[None, :],
                    "-", _key_label(f)))
    if f.bh is not None:
        out.append((f"{f.output}: batch x head", f.bh, "batch", "head"))
    return out


def render_folds(f: Folds) -> Group:
    parts = [render(a, title, rows, cols) for title, a, rows, cols in _panels(f)]
    parts.append(legend())
    parts.append(Text("hints: " + "; ".join(f.hints), style="bold"))
    return Group(*parts)


def save_png(folds: list, path: str, title: str = ""):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install 'flashcore[plot]'") from None
    from matplotlib.ticker import MaxNLocator
    panels = [(name, a) for f in folds for name, a, _, _ in _panels(f)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (name, a) in zip(axes[0], panels):
        # NaN (rows not checked) stays NaN through log10 and is drawn blank
        im = ax.imshow(np.log10(np.maximum(np.atleast_2d(a), 1e-3)), cmap="magma", vmin=-3, vmax=4,
                       aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        if np.atleast_2d(a).shape[0] == 1:
            ax.set_yticks([])
    if any(np.isnan(f.tiles).any() for f in folds):
        title += "  (blank: query rows not checked)"
    fig.colorbar(im, ax=axes[0].tolist(), label="log10(error / tol)")
    fig.suptitle(title)
    hints = "; ".join(h for f in folds for h in f.hints)
    fig.text(0.01, 0.01, "\n".join(hints[i:i + 160] for i in range(0, len(hints), 160)), fontsize=7, va="bottom")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
