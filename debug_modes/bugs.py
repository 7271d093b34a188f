"""Seeded bugs: -DBUG_<NAME> switches in the kernel source, each re-creating one real bug
class in one stage. The harness is tested with them as must-fail cases (docs/DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass


def bug_names(bugs, known, unknown) -> tuple:
    """--bug values as names (case-free, BUG_ optional), each one `known` has; unknown(b) is the
    one-line error for one it has not."""
    from harness.errors import UsageError
    out = []
    for b in bugs or ():
        name = str(b).upper().removeprefix("BUG_")
        if name not in known:
            raise UsageError(unknown(b))
        out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class Bug:
    name: str            # the switch is -DBUG_<name>
    stage: str           # where stage bisection must place it: qk | softmax | pv | glue
    description: str
    needs_input: str = "randn"   # the input set on which the bug shows
    also: tuple = ()             # other acceptable placements (a race shows where it strikes)
    found_by: str = "diagnose"   # the tool that must catch it: diagnose (numbers) or racecheck
    # Shape-dependent bugs: the coverage feature (harness/check/coverage.py FEATURES) without
    # which the bug does not show; "" for bugs that show at every shape.
    shows_when: str = ""

    @property
    def stages(self) -> tuple:
        return (self.stage,) + self.also


BUGS = {
    b.name: b
    for b in (
        Bug("KT_LAYOUT", "qk", "K tile read with the transposed ldmatrix layout"),
        Bug("TAIL_MASK", "qk", "sequence-tail mask off by one: the last valid key is masked"),
        Bug("NO_RESCALE", "glue", "O accumulator not rescaled by alpha when the row max moves"),
        Bug("PV_FIRST_TILE", "pv", "P.V accumulated over the first key tile only"),
        Bug("FRAG_SWAP", "pv", "accumulator fragment rows swapped (c0,c1 <-> c2,c3) when O is stored"),
        Bug("NO_BARRIER", "glue", "next K/V tile issued without the barrier ending the reads of its buffer (race)",
            also=("qk", "pv"), found_by="racecheck"),
        Bug("P_OVERFLOW", "softmax", "row max frozen after the first key tile: P = exp(S - m_first) overflows fp16", "large"),
        # Shape-dependent: invisible at the mission shape, found by the default coverage sweep.
        Bug("TAIL_UNMASKED", "qk", "tail mask bound is the padded length: zero-padded keys of the last key tile score 0",
            shows_when="sk_tail"),
        Bug("SHORT_UNMASKED", "qk", "masking skipped when all keys fit in one partial tile (Sk < BLOCK_N)",
            shows_when="sk_short"),
        Bug("KV_LOOP_SQ", "qk", "key-tile loop bound from min(Sq, Sk): keys past Sq's tiles never visited",
            shows_when="sq_lt_sk"),
        Bug("BATCH_OFFSET", "pv", "O store drops the batch offset", shows_when="b_gt_1"),
        Bug("D128_COLS", "pv", "P.V loop one 16-column block short at D = 128", shows_when="d128"),
        Bug("Q_TAIL_SWAP", "pv", "fragment row halves swapped when a partial (tail) query tile is stored",
            shows_when="sq_tail"),
    )
}
