"""Seeded bugs: -DBUG_<NAME> switches in the kernel source, each re-creating one real bug
class in one stage. The harness is tested with them as must-fail cases (DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bug:
    name: str            # the switch is -DBUG_<name>
    stage: str           # where stage bisection must place it: qk | softmax | pv | glue
    description: str
    needs_input: str = "randn"   # the input set on which the bug shows
    also: tuple = ()             # other acceptable placements (a race shows where it strikes)
    found_by: str = "diagnose"   # the tool that must catch it: diagnose (numbers) or racecheck

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
    )
}
