"""The named suites: `smoke`, `cpu`, `gpu` and `full`, lists of cases (gdn_verify/cases.py).

Suites mix hand-picked boundary cases with a deterministic sample of the large product of
axes (the JAX-tests habit): the sample is a stream keyed by (suite seed, draw index), so it
does not depend on Python's hashing or random module, and asking for more cases keeps the
first ones. `SAMPLED_CASES` is the one knob for each suite's sample size.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from gdn_verify.cases import BETAS, CYCLED_GATES, INIT_STATES, Case, dense, varlen
from gdn_verify.sampling import draw, sample_product


def _unique(cases: Iterable[Case]) -> list[Case]:
    """Drop repeated ids, keeping the first occurrence and the order."""
    out: dict[str, Case] = {}
    for case in cases:
        out.setdefault(case.id, case)
    return list(out.values())


DTYPES = ("float64", "float32", "float16", "bfloat16")
# Lengths on both sides of every chunk edge up to two chunks, plus odd lengths between.
EDGE_T = (1, 2, 3, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 95, 127, 128, 129)
# Packed patterns named by what they exercise (the GPU suites scale them: `_scaled_patterns`).
VARLEN_PATTERNS = {
    "leading-zero": (0, 1, 16, 63),
    "middle-zero": (5, 0, 70),
    "trailing-zero": (64, 1, 0),
    "all-zero": (0, 0),
    "single-tokens": (1, 1, 1, 1, 1, 1, 1),
    "many-short": (3, 1, 7, 2, 5, 1, 9, 4, 12, 1, 6),
    "long-short": (130, 1, 2),
    "short-long-short": (1, 200, 3),
    "edge-mix": (63, 64, 65, 1),
}

# The one knob: how many points of each suite's sampled product join its hand-picked cases.
SAMPLED_CASES = {"smoke": 0, "cpu": 48, "gpu": 300, "full": 1500}
_SUITE_SEED = {"cpu": 1, "gpu": 2, "full": 3}


def _smoke() -> list[Case]:
    return [
        dense(1, H=1, HV=1, K=16, V=16, dtype="float32"),
        dense(65, B=2, H=1, HV=2, K=16, V=16, dtype="bfloat16", init_state="random"),
        varlen((0, 1, 16, 63), H=1, HV=2, K=16, V=32, dtype="float64", l2norm=True),
        dense(64, H=2, HV=4, K=16, V=16, dtype="float16", gate="strong", beta="one"),
        varlen((5, 0, 70), H=1, HV=1, K=20, V=12, dtype="float32", gate="mixed", init_state="random"),
    ]


def _regimes(n: int, offset: int = 0) -> Iterator[dict]:
    """Gate, beta, init-state and l2norm regimes cycled so that neighbouring cases differ."""
    for i in range(offset, offset + n):
        yield {"gate": CYCLED_GATES[i % len(CYCLED_GATES)], "beta": BETAS[i % 3], "init_state": INIT_STATES[(i // 2) % 2],
               "l2norm": bool((i // 3) % 2)}


def _cycled(shapes: Sequence[tuple[str, tuple[int, ...]]], model: tuple[int, int, int, int],
            dtypes: Sequence[str]) -> list[Case]:
    """Every (layout, lengths) shape in every dtype, with the regimes cycling along the shapes
    (shifted by one per dtype, so a shape meets other regimes in each dtype)."""
    H, HV, K, V = model
    return [Case(layout=layout, seq_lens=lens, H=H, HV=HV, K=K, V=V, dtype=dtype, **regime)
            for j, dtype in enumerate(dtypes)
            for (layout, lens), regime in zip(shapes, _regimes(len(shapes), offset=j))]


def _dense(lengths: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    return [("dense", (T,)) for T in lengths]


def _packed(patterns: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    return [("varlen", lens) for lens in patterns.values()]


def _sampled(name: str, axes: dict[str, Sequence], count: int) -> list[Case]:
    """axes: "shape" (layout, lengths), "model" (H, HV, K, V), and Case fields."""
    out = []
    for point in sample_product(axes, count, _SUITE_SEED[name]):
        layout, lens = point.pop("shape")
        H, HV, K, V = point.pop("model")
        out.append(Case(layout=layout, seq_lens=lens, H=H, HV=HV, K=K, V=V, **point))
    return out


def _regime_axes() -> dict[str, Sequence]:
    return {"dtype": DTYPES, "gate": CYCLED_GATES, "beta": BETAS, "init_state": INIT_STATES, "l2norm": (False, True)}


def _extreme_gates(model: tuple[int, int, int, int], dense_T: int, packed: tuple[int, ...]) -> list[Case]:
    """Closed and huge gates mid-chunk, every dtype dense and two packed, with an initial state
    (so a reset has something to discard)."""
    H, HV, K, V = model
    shape = dict(H=H, HV=HV, K=K, V=V, gate="extreme", init_state="random")
    return ([dense(dense_T, dtype=dtype, **shape) for dtype in DTYPES]
            + [varlen(packed, dtype=dtype, l2norm=True, **shape) for dtype in ("float32", "bfloat16")])


def _model_calls_cpu() -> list[Case]:
    """Shapes and dtypes as serving models call the kernels, small enough for the interpreter:
    beta in float32 from a gating kernel beside bfloat16 / float16 q, k, v; three value heads per
    key head (a 48/16 model), with two key heads so that the head map matters; and V above the
    kernels' value blocks (output and decode kernels 64 columns, the recurrence 32) with several
    value heads, so that every stage runs more than one value block per head, a partial one
    included (V = 96)."""
    return [
        dense(100, B=2, H=1, HV=2, K=16, V=16, dtype="bfloat16", beta_dtype="float32", init_state="random"),
        varlen((0, 1, 16, 63), H=1, HV=2, K=16, V=16, dtype="float16", beta_dtype="float32", gate="mixed",
               l2norm=True),
        varlen((5, 70, 1), H=1, HV=3, K=16, V=16, dtype="float32", gate="mixed"),
        dense(33, H=2, HV=6, K=16, V=96, dtype="float32", init_state="random"),
        varlen((3, 64, 66), H=1, HV=2, K=16, V=128, dtype="bfloat16", beta_dtype="float32", l2norm=True,
               init_state="random"),
        dense(40, H=1, HV=3, K=16, V=80, dtype="float64", gate="mixed"),
    ]


def _cpu(count: int) -> list[Case]:
    # Small heads keep the interpreter fast; the shape logic does not depend on their size.
    cases = _cycled(_dense(EDGE_T), (1, 2, 16, 16), ("float64", "bfloat16"))
    cases += _cycled(_dense((1, 17, 64, 65)), (1, 1, 16, 16), ("float32", "float16"))
    cases += _cycled(_packed(VARLEN_PATTERNS), (1, 2, 16, 16), ("float32", "bfloat16"))
    cases += [
        dense(33, B=3, H=2, HV=4, K=16, V=16, dtype="float32", init_state="random"),
        dense(64, H=1, HV=8, K=16, V=16, dtype="bfloat16", gate="mixed", l2norm=True),
        dense(40, H=1, HV=1, K=20, V=12, dtype="float64", init_state="random"),
        dense(70, H=1, HV=1, K=12, V=36, dtype="float32", gate="strong", init_state="random"),
        dense(65, H=1, HV=1, K=64, V=64, dtype="bfloat16", l2norm=True, init_state="random"),
        varlen((10, 0, 54, 1), H=1, HV=1, K=60, V=28, dtype="float16", gate="mixed"),
        dense(20, H=1, HV=1, K=16, V=16, dtype="float32", scale=0.5),
        dense(64, H=1, HV=2, K=16, V=16, dtype="float64", gate="zero", beta="zero", init_state="random"),
    ]
    cases += _extreme_gates((2, 4, 32, 32), 70, (5, 70, 64, 1))
    cases += _model_calls_cpu()
    axes = {
        "shape": [("dense", (T,) * B) for T in (1, 7, 63, 64, 65, 100) for B in (1, 2)]
        + _packed(VARLEN_PATTERNS),
        # The interpreter compiles nothing, so heads and sizes can vary independently here.
        "model": [(H, HV, K, V) for H, HV in ((1, 1), (1, 2), (2, 4), (1, 4), (1, 8))
                  for K, V in ((16, 16), (32, 32), (20, 12), (12, 24))],
        **_regime_axes(),
    }
    return _unique(cases + _sampled("cpu", axes, count))


def _scaled_patterns(factor: int) -> dict[str, tuple[int, ...]]:
    return {name: tuple(n * factor if n > 1 else n for n in lens) for name, lens in VARLEN_PATTERNS.items()}


def _many_short(n: int, seed: int) -> tuple[int, ...]:
    """n sequence lengths in 1..128, reproducible: a serving-style batch of short prefills."""
    return tuple(1 + draw(seed, i, "len", 128) for i in range(n))


# Head layouts and sizes sampled together on the GPU: every distinct (H, HV, K, V, dtype, flags)
# compiles the kernels anew, so a handful of model-like shapes keeps a cold run's compile time
# bounded while still covering HV/H of 1, 2, 4 and 8, K != V and non-powers of two.
GPU_MODELS = ((4, 8, 128, 128), (2, 16, 128, 128), (4, 4, 128, 128), (1, 4, 64, 64), (2, 4, 100, 60))


def _gpu_hand_picked() -> list[Case]:
    model = GPU_MODELS[0]
    H, HV, K, V = model
    # Every T in 1..129 once, dtypes rotating, so every chunk edge meets every dtype nearby.
    cases = [dense(T, H=H, HV=HV, K=K, V=V, dtype=DTYPES[T % 4], **r) for T, r in zip(range(1, 130), _regimes(129))]
    cases += _cycled(_dense(EDGE_T), model, ("bfloat16",))
    long_tails = (255, 256, 257, 511, 1000, 1023, 1024, 1025, 2048, 3000, 4096)
    cases += _cycled(_dense(long_tails), model, DTYPES)
    cases += _cycled(_packed(_scaled_patterns(4)), model, DTYPES)
    cases += [varlen(_many_short(64, seed=s), H=H, HV=HV, K=K, V=V, dtype=dt, init_state="random")
              for s, dt in enumerate(DTYPES)]
    cases += [
        dense(1000, B=2, H=2, HV=16, K=128, V=128, dtype="bfloat16", init_state="random", l2norm=True),
        dense(300, H=2, HV=4, K=100, V=60, dtype="float32", gate="mixed"),
        dense(129, H=2, HV=4, K=256, V=128, dtype="bfloat16", init_state="random"),
        varlen((2000, 1, 3, 500, 0, 77), H=H, HV=HV, K=K, V=V, dtype="bfloat16", gate="mixed", init_state="random"),
    ]
    cases += _extreme_gates(model, 300, (5, 0, 700, 64))
    cases += _model_calls_gpu()
    return cases


# A 48/16 model: three value heads per key head (and its slice on each of four GPUs, 12/4).
GROUP3_MODELS = ((16, 48, 128, 128), (4, 12, 128, 128))


def _model_calls_gpu() -> list[Case]:
    """Serving-shaped calls: beta in float32 from a gating kernel beside bfloat16 / float16 q, k, v,
    and three value heads per key head, prefill and decode."""
    H, HV, K, V = GPU_MODELS[0]
    big, tp4 = (dict(H=h, HV=hv, K=k, V=v) for h, hv, k, v in GROUP3_MODELS)
    return [
        dense(300, H=H, HV=HV, K=K, V=V, dtype="bfloat16", beta_dtype="float32", init_state="random"),
        dense(129, H=H, HV=HV, K=K, V=V, dtype="float16", beta_dtype="float32", gate="mixed", l2norm=True),
        varlen((5, 0, 700, 64), H=H, HV=HV, K=K, V=V, dtype="bfloat16", beta_dtype="float32", l2norm=True,
               init_state="random"),
        varlen(_many_short(64, seed=4), H=H, HV=HV, K=K, V=V, dtype="bfloat16", beta_dtype="float32",
               init_state="random"),
        dense(1000, **big, dtype="bfloat16", beta_dtype="float32", l2norm=True, init_state="random"),
        dense(1, B=8, **big, dtype="bfloat16", beta_dtype="float32", l2norm=True, init_state="random"),
        varlen((3, 500, 1, 64), **tp4, dtype="bfloat16", gate="mixed", l2norm=True, init_state="random"),
        dense(65, **tp4, dtype="float32", init_state="random"),
        dense(777, **tp4, dtype="float16", gate="strong"),
        varlen((130, 1, 2), H=2, HV=6, K=100, V=60, dtype="float32", gate="mixed", init_state="random"),
    ]


def _gpu_axes() -> dict[str, Sequence]:
    return {
        "shape": [("dense", (T,) * B) for T in (1, 5, 63, 64, 65, 200, 777, 2048) for B in (1, 3)]
        + _packed(_scaled_patterns(4)) + [("varlen", _many_short(32, seed=10))],
        "model": GPU_MODELS,
        **_regime_axes(),
    }


def _gpu(count: int) -> list[Case]:
    return _unique(_gpu_hand_picked() + _sampled("gpu", _gpu_axes(), count))


def _full(count: int) -> list[Case]:
    axes = _gpu_axes()
    axes["shape"] = axes["shape"] + [("dense", (T,)) for T in (8192, 16384)] + [
        ("varlen", _many_short(256, seed=20))]
    axes["model"] = axes["model"] + ((16, 32, 128, 128), (8, 64, 128, 128), (4, 8, 256, 256), (2, 4, 60, 100))
    return _unique(_gpu_hand_picked() + _sampled("full", axes, count))


_BUILDERS = {"smoke": lambda count: _smoke(), "cpu": _cpu, "gpu": _gpu, "full": _full}
SUITES = tuple(_BUILDERS)


def suite(name: str, sampled: int | None = None) -> list[Case]:
    """The cases of a named suite; `sampled` overrides SAMPLED_CASES[name]."""
    if name not in _BUILDERS:
        raise ValueError(f"suite: expected one of {SUITES}, got {name!r}")
    return _BUILDERS[name](SAMPLED_CASES[name] if sampled is None else sampled)
