"""The coverage set: a few tiny shapes that together take every branch the kernel takes on
shape, as data, derived from the kernel's own tile table (kernels/registry.py).

A shape-dependent bug shows only at some shape features (B > 1, a key tail, Sq < Sk,
D = 128, ...), alone or two at a time; the mission shape has few of them. The coverage set is
an all-pairs design over FEATURES: for every two features f and g, each of the four
combinations (f and g, f without g, g without f, neither) that some valid shape has appears
in at least one shape of the set. "Both" catches bugs that need two features at once; the
mixed ones let attribution (harness/run/coverage.py) tell f from g.

Features that depend on tiles (tails, short, tile counts) are computed with the tiles the
registry picks for that very shape (KernelSpec.tiles_for), and the candidate lengths are the
edges of those tiles, not fixed numbers: a kernel with other tiles is checked at its own edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Callable

from harness.check.shapes import Shape
from harness.errors import UsageError
from kernels import registry

# The sizes the set may use besides the lengths: one and "more than one" (an odd head count,
# so that no power-of-two stride can pass by accident).
BATCHES = (1, 2)
HEADS = (1, 3)


def kernel_spec(spec=None):
    """The kernel whose tiles the set derives from: the registry's default unless given
    (looked up at call time, so a kernel swapped into the registry is the one checked)."""
    return registry.current() if spec is None else spec


# ------------------------------------------------------------------ one case and its facts
@dataclass(frozen=True)
class Case:
    """One coverage shape: a problem shape and the masking it runs with."""
    shape: Shape
    causal: bool = False

    @property
    def label(self) -> str:
        return self.shape.label + (" causal" if self.causal else "")

    @property
    def cost(self) -> int:
        """Work, for ordering: smaller shapes first."""
        s = self.shape
        return s.B * s.H * s.Sq * s.Sk * s.D


@dataclass(frozen=True)
class Facts:
    """What the features read: the shape, the masking and the tiles chosen for the shape."""
    B: int
    H: int
    Sq: int
    Sk: int
    D: int
    causal: bool
    block_m: int      # query rows per block: 16 * m_frags * nwarps
    block_n: int      # keys per tile
    kv_stages: int    # K/V shared-memory buffers

    @property
    def q_tiles(self) -> int:
        return -(-self.Sq // self.block_m)

    @property
    def k_tiles(self) -> int:
        return -(-self.Sk // self.block_n)


def tile_edges(spec, B: int, H: int, Sq: int, D: int) -> tuple:
    """(block_m, block_n, kv_stages) of the tile table's choice for this shape: the tiles every
    mode of diagnose runs with (a mode that forces its own, fp32_p, is not what they describe)."""
    t = kernel_spec(spec).tiles_for(B, H, Sq, D)
    block_m = t.get("block_m") or 16 * t["m_frags"] * t["nwarps"]   # a spec'd kernel states it (kernels/spec.py)
    return block_m, t["block_n"], t.get("kv_stages", 1)


def facts(case: Case, spec=None) -> Facts:
    s = case.shape
    bm, bn, stages = tile_edges(spec, s.B, s.H, s.Sq, s.D)
    return Facts(s.B, s.H, s.Sq, s.Sk, s.D, case.causal, bm, bn, stages)


# ------------------------------------------------------------------ the features
@dataclass(frozen=True)
class Feature:
    name: str
    tag: str                        # short, for the table
    label: str                      # present; may name the tiles: {block_m}, {block_n}
    neg_label: str                  # absent
    test: Callable[[Facts], bool]

    def text(self, present: bool = True, block_m="BLOCK_M", block_n="BLOCK_N") -> str:
        return (self.label if present else self.neg_label).format(block_m=block_m, block_n=block_n)


FEATURES = {
    f.name: f
    for f in (
        Feature("b_gt_1", "B>1", "B > 1", "B = 1", lambda f: f.B > 1),
        Feature("h_gt_1", "H>1", "H > 1", "H = 1", lambda f: f.H > 1),
        Feature("sq_lt_sk", "Sq<Sk", "Sq < Sk", "Sq >= Sk", lambda f: f.Sq < f.Sk),
        Feature("sq_gt_sk", "Sq>Sk", "Sq > Sk", "Sq <= Sk", lambda f: f.Sq > f.Sk),
        Feature("sq_tail", "Sq-tail", "Sq not a multiple of the {block_m}-row query tile",
                "Sq a multiple of the {block_m}-row query tile", lambda f: f.Sq % f.block_m != 0),
        Feature("sk_tail", "Sk-tail", "Sk not a multiple of the {block_n}-key tile",
                "Sk a multiple of the {block_n}-key tile", lambda f: f.Sk % f.block_n != 0),
        Feature("sq_short", "Sq-short", "Sq < {block_m} (shorter than one query tile)", "Sq >= {block_m}",
                lambda f: f.Sq < f.block_m),
        Feature("sk_short", "Sk-short", "Sk < {block_n} (shorter than one key tile)", "Sk >= {block_n}",
                lambda f: f.Sk < f.block_n),
        Feature("sq_one", "Sq=1", "Sq = 1", "Sq > 1", lambda f: f.Sq == 1),
        Feature("causal", "causal", "causal", "non-causal", lambda f: f.causal),
        Feature("d128", "D=128", "D = 128", "D = 64", lambda f: f.D == 128),
        # Tile counts: more than one query tile (grid x > 1, causal tile order); more than one
        # key tile (the online rescale, the second K/V buffer); more key tiles than K/V
        # buffers (a buffer is refilled while the loop runs).
        Feature("sq_multi", "Sq-multi", "Sq spans several {block_m}-row query tiles",
                "Sq fits in one query tile", lambda f: f.q_tiles > 1),
        Feature("sk_multi", "Sk-multi", "Sk spans several {block_n}-key tiles",
                "Sk fits in one key tile", lambda f: f.k_tiles > 1),
        Feature("sk_reuse", "KV-reuse", "Sk spans more key tiles than K/V buffers (a buffer is refilled)",
                "no K/V buffer is refilled", lambda f: f.k_tiles > f.kv_stages),
    )
}


def features_of(case: Case, spec=None) -> frozenset:
    """The names of the features a case has, with the tiles the registry picks for it."""
    fx = facts(case, spec)
    return frozenset(n for n, f in FEATURES.items() if f.test(fx))


def valid(case: Case, spec=None) -> bool:
    """A case exercises what its features claim.

    Sq != Sk only when the two lengths differ by whole tiles, in query tiles and in key tiles:
    the kernel's loops and its grid run over tiles, so a difference inside one tile changes
    no trip count (it exercises a subset of what a whole-tile difference does), and a set that
    held one would say "Sq < Sk" of a shape where a loop bound taken from the wrong length
    cannot show."""
    if case.causal and not getattr(kernel_spec(spec), "causal", True):
        return False                  # the spec's domain has no causal masking
    if case.shape.Sq != case.shape.Sk and getattr(kernel_spec(spec), "self_attention_only", False):
        return False                  # the spec's domain is Sq = Sk
    fx = facts(case, spec)
    if fx.Sq == fx.Sk:
        return True
    by_m = -(-fx.Sq // fx.block_m) != -(-fx.Sk // fx.block_m)
    by_n = -(-fx.Sq // fx.block_n) != -(-fx.Sk // fx.block_n)
    return by_m and by_n


# ------------------------------------------------------------------ candidate lengths
def lengths_for(block_m: int, block_n: int, kv_stages: int = 1) -> list:
    """The lengths a sequence takes in the set, from the tile edges: 1; a partial tile shorter
    than either tile; the smaller tile; k whole tiles and k whole tiles plus a partial one
    (a tail), for k up to one more tile than there are K/V buffers (so that a buffer is
    refilled), and that plus a partial tile (so that Sq > Sk can hold with a refilled buffer).
    "Whole tiles" are common multiples of both tiles. The partial part is half the smaller
    tile plus one: not a multiple of 8 or 16, so it ends inside an mma fragment."""
    t, T = min(block_m, block_n), math.lcm(block_m, block_n)
    part = t // 2 + 1
    out = {1, part, t}
    for k in range(1, max(2, kv_stages + 1) + 1):
        out.update((k * T, k * T + part))
    return sorted(out)


def tile_choices(spec, D: int) -> set:
    """The tiles (block_m, block_n, kv_stages) the table picks for coverage-sized shapes of
    head dim D: for the smallest shape and for the largest one its lengths allow (the table
    switches on size only, so these two bound every choice in between)."""
    small = tile_edges(spec, 1, 1, 1, D)
    longest = max(lengths_for(*small))
    return {small, tile_edges(spec, max(BATCHES), max(HEADS), longest, D)}


def candidate_lengths(spec, D: int) -> list:
    out = set()
    for tiles in tile_choices(spec, D):
        out.update(lengths_for(*tiles))
    return sorted(out)


def candidates(spec=None, head_dims=None, causal=None) -> list:
    """Every valid case the set may choose from: B, H, D, masking and the tile-edge lengths."""
    spec = kernel_spec(spec)
    dims = spec.head_dims if head_dims is None else tuple(head_dims)
    masks = (False, True) if causal is None else (causal,)
    out = []
    for D in dims:
        lengths = candidate_lengths(spec, D)
        for B in BATCHES:
            for H in HEADS:
                for c in masks:
                    for Sq in lengths:
                        for Sk in lengths:
                            case = Case(Shape(B, H, Sq, Sk, D), c)
                            if valid(case, spec):
                                out.append(case)
    return out


# ------------------------------------------------------------------ all pairs
NAMES = tuple(FEATURES)
PAIRS = tuple(combinations(range(len(NAMES)), 2))


def combos(feats: frozenset) -> frozenset:
    """The (feature i, present?, feature j, present?) combinations a case covers."""
    has = [n in feats for n in NAMES]
    return frozenset((i, has[i], j, has[j]) for i, j in PAIRS)


def all_pairs(pool: list, spec=None) -> list:
    """Greedy all-pairs: repeatedly take the case that covers the most combinations not yet
    covered (ties: the smaller case), until every combination some case in the pool covers
    is covered. Deterministic for a given pool."""
    cov = [combos(features_of(c, spec)) for c in pool]
    wanted = frozenset().union(*cov) if cov else frozenset()
    order = sorted(range(len(pool)), key=lambda i: (pool[i].cost, pool[i].label))
    chosen, covered = [], set()
    while covered != wanted:
        best = max(order, key=lambda i: len(cov[i] - covered))   # max keeps the first (smallest) of ties
        chosen.append(pool[best])
        covered |= cov[best]
    return chosen


def coverage_set(spec=None, head_dims=None, causal=None) -> list:
    """The coverage set of a kernel (default: the registry's), optionally restricted to some
    head dims or to one masking; ordered by head dim, masking and size."""
    spec = kernel_spec(spec)
    for D in head_dims or ():
        if D not in spec.head_dims:
            raise UsageError(f"unsupported head dim {D}; the kernel supports {', '.join(map(str, spec.head_dims))}")
    chosen = all_pairs(candidates(spec, head_dims, causal), spec)
    return sorted(chosen, key=lambda c: (c.shape.D, c.causal, c.cost, c.label))


def uncovered(cases: list, pool: list, spec=None) -> set:
    """The combinations some case of the pool covers and no case of `cases` does (for tests
    and for anyone editing the set by hand)."""
    have = frozenset().union(*(combos(features_of(c, spec)) for c in cases)) if cases else frozenset()
    want = frozenset().union(*(combos(features_of(c, spec)) for c in pool)) if pool else frozenset()
    return set(want - have)


def describe_combo(combo) -> str:
    i, a, j, b = combo
    return f"{NAMES[i]}={'yes' if a else 'no'} & {NAMES[j]}={'yes' if b else 'no'}"
