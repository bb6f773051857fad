"""Deterministic sampling of a product of axes: the same points on every machine and Python
version (sha256-based draws, no random module), a stream stable under the count."""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence


def draw(seed: int, index: int, axis: str, n: int) -> int:
    """A reproducible integer in [0, n) for one axis of one draw."""
    digest = hashlib.sha256(f"{seed}:{index}:{axis}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


def sample_product(axes: dict[str, Sequence], count: int, seed: int) -> Iterator[dict]:
    """`count` distinct points of the product of `axes`, a stream stable under `count`."""
    total = 1
    for values in axes.values():
        total *= len(values)
    count = min(count, total)
    seen: set[tuple] = set()
    index = 0
    while len(seen) < count:
        picks = tuple(draw(seed, index, name, len(values)) for name, values in axes.items())
        index += 1
        if picks in seen:
            continue
        seen.add(picks)
        yield {name: values[i] for (name, values), i in zip(axes.items(), picks)}
