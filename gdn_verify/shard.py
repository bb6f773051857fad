"""Sharded runs: `--shard I/N` splits a selection of cases into N disjoint parts.

The spec is 1-based, as CI matrices number their jobs: `--shard 1/4` .. `--shard 4/4`, and
`--shard 1/1` is the whole selection.

The split (`shard_cases`) is the greedy longest-processing-time schedule by the cost estimate
the mutation run also uses (`gdn_verify.cases.case_cost`): cases sorted by cost, largest first, ties broken
by case id, each given to the shard with the least cost so far (ties: fewer cases, then the
lower index). So:

* every case of the selection is in exactly one shard, and the N shards together are the
  selection;
* the split depends only on the set of case ids (with their cases), not on their order in the
  input: N jobs that select the same cases agree on it without talking to each other;
* the shards' costs differ by at most the largest case's cost (any greedy assignment to the
  least loaded shard has this bound), and with N <= the number of cases no shard is empty;
* each shard's cases keep the selection's order, so a shard runs like a run of those cases.

`shard_metadata` is what a shard's report records (the top-level "shard" key) so that
`gdn_verify.report_merge` can put the shards back together in the selection's order and refuse
shards of different selections, options or incomplete sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import NamedTuple, Sequence

from gdn_verify.cases import Case, case_cost

_SPEC = re.compile(r"\s*([+-]?\d+)\s*/\s*([+-]?\d+)\s*")


class Shard(NamedTuple):
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_problem(text: str) -> str | None:
    """Why text is not a shard spec I/N (1 <= I <= N), without a flag name; None when it is."""
    match = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return f"expected I/N, two integers with 1 <= I <= N (e.g. 2/4), got {text!r}"
    index, count = int(match[1]), int(match[2])
    if count < 1:
        return f"N (the number of shards) must be >= 1, got {text!r}"
    if not 1 <= index <= count:
        return f"I (this shard, counted from 1) must be in 1..{count}, got {text!r}"
    return None


def parse_shard(text: str, flag: str = "--shard") -> Shard:
    """Shard from "I/N"; ValueError naming `flag` otherwise (a usage error: exit 2)."""
    problem = shard_problem(text)
    if problem is not None:
        raise ValueError(f"{flag}: {problem}")
    match = _SPEC.fullmatch(text)
    return Shard(int(match[1]), int(match[2]))


def shard_argument(text: str) -> Shard:
    """argparse `type=` for --shard (argparse names the flag in its message itself)."""
    import argparse

    problem = shard_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return parse_shard(text)


def _check_unique(cases: Sequence[Case]) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise ValueError(f"cases: case id {case.id!r} appears twice; a shard split needs distinct ids")
        seen.add(case.id)


def assign(cases: Sequence[Case], count: int) -> dict[str, int]:
    """Case id -> shard index (1-based) of every case: the LPT schedule described above."""
    if count < 1:
        raise ValueError(f"--shard: N (the number of shards) must be >= 1, got {count}")
    _check_unique(cases)
    loads = [(0, 0, i) for i in range(1, count + 1)]  # (cost, cases, index) per shard
    out: dict[str, int] = {}
    for case in sorted(cases, key=lambda c: (-case_cost(c), c.id)):
        k = min(range(count), key=lambda j: loads[j])
        cost, n, index = loads[k]
        loads[k] = (cost + case_cost(case), n + 1, index)
        out[case.id] = index
    return out


def shard_cases(cases: Sequence[Case], index: int, count: int) -> list[Case]:
    """The cases of shard `index` (1-based) of `count`, in the order of `cases`.

    ValueError (messages name --shard) when index is not in 1..count, or when there are fewer
    cases than shards (a shard would check nothing, which is never a pass)."""
    if count < 1:
        raise ValueError(f"--shard: N (the number of shards) must be >= 1, got {count}")
    if not 1 <= index <= count:
        raise ValueError(f"--shard: I (this shard, counted from 1) must be in 1..{count}, got {index}")
    if count > len(cases):
        raise ValueError(f"--shard {index}/{count}: the selection has {len(cases)} cases, fewer than {count} "
                         f"shards; use at most {len(cases)} shards")
    shard_of = assign(cases, count)
    return [c for c in cases if shard_of[c.id] == index]


def split(cases: Sequence[Case], count: int) -> list[list[Case]]:
    """All `count` shards (shard i at position i - 1), each in the order of `cases`."""
    shard_of = assign(cases, count)
    return [[c for c in cases if shard_of[c.id] == i] for i in range(1, count + 1)]


def selection_digest(cases: Sequence[Case]) -> str:
    """sha256 of the selection's case ids in order: shards of one selection share it."""
    return hashlib.sha256("\n".join(c.id for c in cases).encode()).hexdigest()


def options_json(options) -> dict:
    """A RunOptions (or any dataclass) as JSON, tuples as lists."""
    data = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def shard_metadata(selection: Sequence[Case], shard: Shard, command: str = "run", options=None) -> dict:
    """The report's top-level "shard" key for shard `shard` of `selection` (the whole selection,
    before sharding, in its order):

        {"index": I, "count": N, "selected": len(selection), "selection_digest": sha256 of the
         ids, "positions": [position in the selection of each case of this shard, in run order],
         "cost": this shard's summed cost estimate, "command": "run" | "golden diff",
         "options": RunOptions as JSON}
    """
    mine = shard_cases(selection, shard.index, shard.count)
    position = {c.id: i for i, c in enumerate(selection)}
    meta = {"index": shard.index, "count": shard.count, "selected": len(selection),
            "selection_digest": selection_digest(selection), "positions": [position[c.id] for c in mine],
            "cost": sum(case_cost(c) for c in mine), "command": command}
    if options is not None:
        meta["options"] = options_json(options)
    return meta
