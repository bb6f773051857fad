"""The three float64 references against each other, against a scalar loop, and against the
invariants of the recurrence."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gdn_verify.contract import L2NORM_EPS
from gdn_verify.reference import (
    CHUNK_SIZE,
    chunked_gated_delta_rule,
    jax_recurrent_gated_delta_rule,
    recurrent_gated_delta_rule,
)

# float64 references that differ only in the order of their arithmetic agree to about 1e-15;
# 1e-12 leaves room for the chunk form's triangular solve and still catches any real mistake.
REFERENCE_RTOL = 1e-12


def _norm(x: torch.Tensor) -> float:
    """Euclidean norm, scaled first so that tiny entries (strong decay) do not square to zero."""
    largest = x.abs().max().item() if x.numel() else 0.0
    return 0.0 if largest == 0 else largest * torch.linalg.vector_norm(x / largest).item()


def rms_ratio(actual, expected) -> float:
    """||actual - expected|| / ||expected||; an all-zero expected demands an all-zero actual."""
    actual, expected = (torch.as_tensor(np.array(x) if not torch.is_tensor(x) else x).double().cpu()
                        for x in (actual, expected))
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err, ref = _norm(actual - expected), _norm(expected)
    if ref == 0:
        return 0.0 if err == 0 else math.inf
    return err / ref


def test_rms_ratio_of_zero_reference():
    zero = torch.zeros(3)
    assert rms_ratio(zero, zero) == 0.0
    assert rms_ratio(torch.tensor([0.0, 1e-300, 0.0], dtype=torch.float64), zero) == math.inf
    assert rms_ratio(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(4 / 3)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Case:
    """One GDN problem: dense (B rows of T tokens) when varlen is False, else varlen (cu_seqlens)."""

    seq_lens: tuple[int, ...]
    varlen: bool
    H: int
    HV: int
    K: int
    V: int
    gate: str = "decay"  # zero: g = 0; decay: g in (-1, 0]; strong: g in (-30, 0]
    beta: str = "random"  # zero, one, random in [0, 1)
    h0: bool = True
    l2norm: bool = True

    @property
    def id(self) -> str:
        if self.varlen:
            shape = "lens" + ".".join(map(str, self.seq_lens))
        else:
            shape = f"B{len(self.seq_lens)}-T{self.seq_lens[0]}"
        return "-".join([
            shape, f"H{self.H}-HV{self.HV}-K{self.K}-V{self.V}", f"g_{self.gate}", f"beta_{self.beta}",
            "h0" if self.h0 else "no_h0", "l2" if self.l2norm else "no_l2",
        ])


def dense(B: int, T: int, H: int, HV: int, K: int, V: int, **kw) -> Case:
    return Case((T,) * B, False, H, HV, K, V, **kw)


def varlen(lens: tuple[int, ...], H: int, HV: int, K: int, V: int, **kw) -> Case:
    return Case(tuple(lens), True, H, HV, K, V, **kw)


def make_inputs(case: Case, seed: int, device="cpu") -> dict:
    """Arguments for any reference, float64. Without l2norm the keys get norms in [0.5, 1], so
    that beta |k|^2 <= 1 and the recurrence stays bounded, as it does for normalized keys."""
    gen = torch.Generator().manual_seed(seed)
    B, T = (1, sum(case.seq_lens)) if case.varlen else (len(case.seq_lens), case.seq_lens[0])
    N = len(case.seq_lens)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    q, k = randn(B, T, case.H, case.K), randn(B, T, case.H, case.K)
    if not case.l2norm:
        k = k / k.norm(dim=-1, keepdim=True) * (0.5 + 0.5 * rand(B, T, case.H, 1))
    g = {"zero": lambda: torch.zeros(B, T, case.HV, dtype=torch.float64),
         "decay": lambda: -rand(B, T, case.HV),
         "strong": lambda: -30 * rand(B, T, case.HV)}[case.gate]()
    beta = {"zero": lambda: torch.zeros(B, T, case.HV, dtype=torch.float64),
            "one": lambda: torch.ones(B, T, case.HV, dtype=torch.float64),
            "random": lambda: rand(B, T, case.HV)}[case.beta]()
    args = dict(q=q, k=k, v=randn(B, T, case.HV, case.V), g=g, beta=beta,
                initial_state=randn(N, case.HV, case.K, case.V) if case.h0 else None,
                cu_seqlens=torch.tensor((0, *np.cumsum(case.seq_lens))) if case.varlen else None,
                l2norm=case.l2norm, output_final_state=True)
    return {name: x.to(device) if torch.is_tensor(x) else x for name, x in args.items()}


# Covering, not Cartesian: every T of the issue, every head ratio, K != V and odd sizes, each
# gate and beta regime, with and without initial state and l2norm, spread over few cases.
AGREEMENT_CASES = [
    dense(2, 1, 2, 2, 16, 16),
    dense(1, 2, 1, 4, 32, 16, gate="zero", h0=False, l2norm=False),
    dense(2, 15, 2, 4, 24, 40, gate="strong", beta="one"),
    dense(1, 16, 4, 4, 64, 32, beta="zero", l2norm=False),
    dense(1, 17, 1, 2, 20, 48, h0=False),
    dense(2, 63, 2, 2, 48, 24, gate="strong", l2norm=False),
    dense(1, 64, 1, 1, 64, 64, gate="zero", beta="one"),
    dense(1, 65, 2, 8, 40, 56),
    # beta = 0 from a zero state: o and the final state are exactly zero in every reference.
    dense(1, 127, 1, 4, 24, 16, gate="strong", beta="zero", h0=False),
    dense(1, 128, 2, 4, 32, 72, gate="zero", h0=False, l2norm=False),
    dense(2, 129, 1, 1, 72, 40, beta="one", l2norm=False),
    dense(1, 200, 1, 2, 36, 20, gate="strong", beta="one"),
    varlen((0, 1, 64, 0, 65, 1, 0), 2, 4, 32, 48),
    varlen((1, 1, 1, 1), 1, 2, 16, 24, gate="strong", l2norm=False),
    varlen((0, 130, 0), 1, 4, 16, 8, gate="zero", h0=False),
    varlen((17, 0, 0, 63, 128, 2), 2, 2, 56, 40, beta="one"),
    varlen((0, 0), 1, 2, 8, 8),
    varlen((5, 0, 3), 2, 8, 12, 20, gate="zero", beta="zero"),
]


@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=lambda c: c.id)
def test_references_agree(case, device):
    args = make_inputs(case, seed=1, device=device)
    o_rec, s_rec = recurrent_gated_delta_rule(**args)
    o_chunk, s_chunk, _ = chunked_gated_delta_rule(**args)
    o_jax, s_jax = jax_recurrent_gated_delta_rule(**{n: x.cpu() if torch.is_tensor(x) else x
                                                     for n, x in args.items()})
    for name, got, want in [("o chunked/recurrent", o_chunk, o_rec), ("o jax/recurrent", o_jax, o_rec),
                            ("state chunked/recurrent", s_chunk, s_rec), ("state jax/recurrent", s_jax, s_rec),
                            ("o chunked/jax", o_chunk, o_jax), ("state chunked/jax", s_chunk, s_jax)]:
        assert rms_ratio(got, want) <= REFERENCE_RTOL, name


# ---------------------------------------------------------------------------------------------
# An obviously right scalar loop: one sequence, one head, one token at a time.


def scalar_loop(q, k, v, g, beta, scale, initial_state, seq_lens, varlen_rows, l2norm):
    q, k, v, g, beta, h0 = (x.numpy() for x in (q, k, v, g, beta, initial_state))
    H, HV = q.shape[2], v.shape[2]
    o = np.zeros(v.shape)
    final = np.zeros(h0.shape)
    start = 0
    for n, length in enumerate(seq_lens):
        row, first = (0, start) if varlen_rows else (n, 0)
        for h in range(HV):
            S = h0[n, h].copy()
            for t in range(first, first + length):
                q_t, k_t = q[row, t, h // (HV // H)], k[row, t, h // (HV // H)]
                if l2norm:
                    q_t = q_t / math.sqrt(float(q_t @ q_t) + L2NORM_EPS)
                    k_t = k_t / math.sqrt(float(k_t @ k_t) + L2NORM_EPS)
                S = math.exp(g[row, t, h]) * S
                u = beta[row, t, h] * (v[row, t, h] - S.T @ k_t)
                S = S + np.outer(k_t, u)
                o[row, t, h] = scale * (S.T @ q_t)
            final[n, h] = S
        start += length
    return o, final


@pytest.mark.parametrize("case", [
    varlen((3, 0, 5, 1), 2, 4, 5, 3),
    dense(2, 6, 1, 2, 3, 4, gate="strong", l2norm=False),
], ids=lambda c: c.id)
def test_references_match_scalar_loop(case):
    args = make_inputs(case, seed=2)
    scale = 0.7
    want_o, want_state = scalar_loop(args["q"], args["k"], args["v"], args["g"], args["beta"], scale,
                                     args["initial_state"], case.seq_lens, case.varlen, case.l2norm)
    args["scale"] = scale
    results = {"recurrent": recurrent_gated_delta_rule(**args),
               "chunked": chunked_gated_delta_rule(**args)[:2],
               "jax": jax_recurrent_gated_delta_rule(**args)}
    for name, (o, state) in results.items():
        assert rms_ratio(o, want_o) <= REFERENCE_RTOL, name
        assert rms_ratio(state, want_state) <= REFERENCE_RTOL, name


# ---------------------------------------------------------------------------------------------
# Chunk intermediates: layouts of docs/design.md, 'Chunked form', each stage checked chunk by
# chunk without padding.


@pytest.mark.parametrize("case, chunk_map", [pytest.param(case, chunk_map, id=case.id) for case, chunk_map in [
    (varlen((0, 70, 1, 0, 64, 129), 2, 4, 24, 40, gate="strong"),
     dict(seq=[1, 1, 2, 4, 5, 5, 5], first=[0, 64, 70, 71, 135, 199, 263], len=[64, 6, 1, 64, 64, 64, 1])),
    (dense(2, 65, 1, 2, 16, 8, l2norm=False),  # first token on the flattened [B*T] axis: row 1 starts at 65
     dict(seq=[0, 0, 1, 1], first=[0, 64, 65, 129], len=[64, 1, 64, 1])),
]])
def test_chunk_intermediates_follow_stages_layout(case, chunk_map):
    args = make_inputs(case, seed=3)
    o, state, inter = chunked_gated_delta_rule(**args)
    (B, T), HV, K, V, C = args["q"].shape[:2], case.HV, case.K, case.V, CHUNK_SIZE
    NT = len(chunk_map["seq"])
    expected_shapes = {"g_cum": (B, T, HV), "A": (B, T, HV, C), "Tm": (B, T, HV, C), "W": (B, T, HV, K),
                       "U": (B, T, HV, V), "h": (NT, HV, K, V), "v_new": (B, T, HV, V), "o": (B, T, HV, V),
                       "final_state": (len(case.seq_lens), HV, K, V), "chunk_seq": (NT,),
                       "chunk_first": (NT,), "chunk_len": (NT,)}
    assert {name: tuple(getattr(inter, name).shape) for name in expected_shapes} == expected_shapes
    assert inter.o is o and inter.final_state is state
    assert inter.chunk_seq.tolist() == chunk_map["seq"]
    assert inter.chunk_first.tolist() == chunk_map["first"]
    assert inter.chunk_len.tolist() == chunk_map["len"]

    # Each stage recomputed for one chunk at a time, on the flattened token axis, unpadded.
    tokens = {name: args[name].reshape(B * T, *args[name].shape[2:]) for name in ("q", "k", "v", "g", "beta")}
    stages = {name: getattr(inter, name).reshape(B * T, *getattr(inter, name).shape[2:])
              for name in ("g_cum", "A", "Tm", "W", "U", "v_new", "o")}
    q, k, v, g, beta = (tokens[name] for name in ("q", "k", "v", "g", "beta"))
    if case.l2norm:
        q, k = (x / torch.sqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS) for x in (q, k))
    group = HV // case.H
    q, k = q.repeat_interleave(group, 1), k.repeat_interleave(group, 1)
    seq_starts = np.cumsum((0,) + case.seq_lens)
    scale = case.K ** -0.5
    for c, (n, first, L) in enumerate(zip(chunk_map["seq"], chunk_map["first"], chunk_map["len"])):
        tok = slice(first, first + L)
        gam = g[tok].cumsum(0).T  # [HV, L]
        kh, qh, vh, bh = k[tok].transpose(0, 1), q[tok].transpose(0, 1), v[tok].transpose(0, 1), beta[tok].T
        diff = gam[:, :, None] - gam[:, None, :]
        lower = torch.ones(L, L, dtype=torch.bool).tril(-1)
        A = torch.where(lower, bh[:, :, None] * (kh @ kh.mT) * diff.clamp(max=0).exp(), 0)
        Tm = torch.linalg.inv(torch.eye(L, dtype=torch.float64) + A)
        W = Tm @ ((bh * gam.exp())[..., None] * kh)
        U = Tm @ (bh[..., None] * vh)
        # The state entering the chunk: the recurrent reference run over the sequence's prefix.
        prefix = {name: x[None, seq_starts[n]:first] for name, x in tokens.items()}
        _, S = recurrent_gated_delta_rule(**prefix, initial_state=args["initial_state"][n:n + 1],
                                          output_final_state=True, l2norm=case.l2norm)
        S = S[0]
        v_new = U - W @ S
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        o_chunk = scale * (gam.exp()[..., None] * (qh @ S)
                           + torch.where(causal, (qh @ kh.mT) * diff.clamp(max=0).exp(), 0) @ v_new)

        def rows(x):  # [HV, L, ...] -> token rows [L, HV, ...]
            return x.transpose(0, 1)

        def padded_rows(x):  # [HV, L, L] -> [L, HV, C]: columns past the chunk are zero
            return rows(torch.nn.functional.pad(x, (0, C - L)))

        for name, want in [("g_cum", gam.T), ("A", padded_rows(A)), ("Tm", padded_rows(Tm)), ("W", rows(W)),
                           ("U", rows(U)), ("v_new", rows(v_new)), ("o", rows(o_chunk))]:
            assert rms_ratio(stages[name][tok], want) <= REFERENCE_RTOL, f"chunk {c}: {name}"
        assert rms_ratio(inter.h[c], S) <= REFERENCE_RTOL, f"chunk {c}: h"


# ---------------------------------------------------------------------------------------------
# Invariants (hypothesis), for both PyTorch references.

TORCH_REFERENCES = {
    "recurrent": recurrent_gated_delta_rule,
    "chunked": lambda **args: chunked_gated_delta_rule(**args)[:2],
}
by_reference = pytest.mark.parametrize("reference", TORCH_REFERENCES.values(), ids=TORCH_REFERENCES.keys())


@st.composite
def head_shapes(draw):
    H = draw(st.sampled_from([1, 2]))
    return dict(H=H, HV=H * draw(st.sampled_from([1, 2, 4])), K=draw(st.integers(1, 9)), V=draw(st.integers(1, 9)))


gates = st.sampled_from(["zero", "decay", "strong"])
betas = st.sampled_from(["zero", "one", "random"])
seeds = st.integers(0, 2**31 - 1)


@by_reference
@given(heads=head_shapes(), T=st.integers(1, 140), cut=st.floats(0, 1), gate=gates, beta=betas,
       l2norm=st.booleans(), seed=seeds)
def test_split_chained_through_state_equals_one_call(reference, heads, T, cut, gate, beta, l2norm, seed):
    args = make_inputs(dense(1, T, **heads, gate=gate, beta=beta, l2norm=l2norm), seed)
    o_whole, s_whole = reference(**args)
    split = round(cut * T)
    tokens = ("q", "k", "v", "g", "beta")
    first = dict(args, **{name: args[name][:, :split] for name in tokens})
    o_first, s_first = reference(**first)
    second = dict(args, initial_state=s_first, **{name: args[name][:, split:] for name in tokens})
    o_second, s_second = reference(**second)
    assert rms_ratio(torch.cat([o_first, o_second], dim=1), o_whole) <= REFERENCE_RTOL
    assert rms_ratio(s_second, s_whole) <= REFERENCE_RTOL


@by_reference
@given(heads=head_shapes(), lens=st.lists(st.integers(0, 80), min_size=1, max_size=5), l2norm=st.booleans(),
       seed=seeds)
def test_no_decay_no_write_keeps_state_and_reads_it(reference, heads, lens, l2norm, seed):
    case = varlen(tuple(lens), **heads, gate="zero", beta="zero", l2norm=l2norm)
    args = make_inputs(case, seed)
    h0 = args["initial_state"]
    o, state = reference(**args)
    assert torch.equal(state, h0)
    q = args["q"][0]
    if l2norm:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + L2NORM_EPS)
    q = q.repeat_interleave(case.HV // case.H, dim=1)  # [T, HV, K]
    seq_of_token = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    expected = case.K ** -0.5 * torch.einsum("thkv,thk->thv", h0[seq_of_token], q)
    assert rms_ratio(o[0], expected) <= REFERENCE_RTOL


@by_reference
@given(heads=head_shapes(), lens=st.lists(st.integers(0, 80), min_size=1, max_size=5), gate=gates, beta=betas,
       h0=st.booleans(), seed=seeds)
def test_packing_equals_separate_runs(reference, heads, lens, gate, beta, h0, seed):
    case = varlen(tuple(lens), **heads, gate=gate, beta=beta, h0=h0)
    args = make_inputs(case, seed)
    o_varlen, s_varlen = reference(**args)
    starts = np.cumsum([0] + lens)
    for n, (start, end) in enumerate(zip(starts[:-1], starts[1:])):
        alone = {name: args[name][:, start:end] for name in ("q", "k", "v", "g", "beta")}
        o, s = reference(**alone, initial_state=None if not h0 else args["initial_state"][n:n + 1],
                         output_final_state=True, l2norm=case.l2norm)
        assert rms_ratio(o_varlen[:, start:end], o) <= REFERENCE_RTOL, f"sequence {n}"
        assert rms_ratio(s_varlen[n], s[0]) <= REFERENCE_RTOL, f"sequence {n}"


@by_reference
@given(heads=head_shapes(), lens=st.lists(st.integers(0, 70), max_size=5), zero_at=st.integers(0, 5), gate=gates,
       seed=seeds)
def test_zero_length_sequence_keeps_initial_state(reference, heads, lens, zero_at, gate, seed):
    lens = lens[:zero_at] + [0] + lens[zero_at:]
    args = make_inputs(varlen(tuple(lens), **heads, gate=gate), seed)
    _, state = reference(**args)
    for n, length in enumerate(lens):
        if length == 0:
            assert torch.equal(state[n], args["initial_state"][n]), f"sequence {n}"


# ---------------------------------------------------------------------------------------------
# Calling conventions


@pytest.mark.parametrize("reference", [recurrent_gated_delta_rule, chunked_gated_delta_rule],
                         ids=["recurrent", "chunked"])
def test_inputs_are_not_modified_nor_aliased(reference):
    args = make_inputs(varlen((0, 3, 70), 1, 2, 4, 5), seed=4)
    before = {name: x.clone() for name, x in args.items() if torch.is_tensor(x)}
    state = reference(**args)[1]
    for name, x in before.items():
        assert torch.equal(args[name], x), name
    state[0].add_(1.0)  # a zero-length sequence's final state is a copy, not the caller's tensor
    assert torch.equal(args["initial_state"], before["initial_state"])


def test_final_state_only_when_asked():
    args = dict(make_inputs(dense(1, 3, 1, 1, 2, 2), seed=5), output_final_state=False)
    assert recurrent_gated_delta_rule(**args)[1] is None
    assert chunked_gated_delta_rule(**args)[1] is None
    assert jax_recurrent_gated_delta_rule(**args)[1] is None


def test_low_precision_inputs_and_compute_dtype():
    args = make_inputs(varlen((4, 0, 9), 2, 4, 8, 6), seed=6)
    want_o, want_state = recurrent_gated_delta_rule(**args)
    low = dict(args, **{name: args[name].to(torch.bfloat16) for name in ("q", "k", "v")},
               **{name: args[name].float() for name in ("g", "beta", "initial_state")})
    o, state = recurrent_gated_delta_rule(**low)
    assert o.dtype == state.dtype == torch.float64
    o32, state32 = recurrent_gated_delta_rule(**low, dtype=torch.float32)
    assert o32.dtype == state32.dtype == torch.float32
    # Bounds about 8x above what was measured (1.2e-7 for float32 arithmetic on the same
    # inputs, 2.0e-3 for the bf16 rounding of q, k, v): they check that the dtype is honoured.
    assert rms_ratio(o32, o) < 1e-6
    assert 0 < rms_ratio(o, want_o) < 2e-2
    o_jax, _ = jax_recurrent_gated_delta_rule(**low)
    assert rms_ratio(o_jax, o) <= REFERENCE_RTOL


def test_jax_reference_takes_numpy_and_jax_arrays():
    import jax.numpy as jnp

    # float32 inputs: a caller's JAX arrays are float32 unless it enabled x64 itself.
    args = {n: x.float() if torch.is_tensor(x) and x.is_floating_point() else x
            for n, x in make_inputs(varlen((2, 5), 1, 2, 3, 4), seed=7).items()}
    want_o, want_state = jax_recurrent_gated_delta_rule(**args)
    conversions = {
        "numpy": lambda name, x: x.numpy(),
        "jax": lambda name, x: jnp.asarray(x.numpy()),
        "jax, numpy cu_seqlens": lambda name, x: x.numpy() if name == "cu_seqlens" else jnp.asarray(x.numpy()),
    }
    for convert in conversions.values():
        o, state = jax_recurrent_gated_delta_rule(**{n: convert(n, x) if torch.is_tensor(x) else x
                                                     for n, x in args.items()})
        assert isinstance(o, np.ndarray) and o.dtype == np.float64 and o.flags.writeable
        np.testing.assert_array_equal(o, want_o)
        np.testing.assert_array_equal(state, want_state)


def test_jax_reference_leaves_x64_flag_alone():
    import jax
    import jax.numpy as jnp

    args = make_inputs(dense(1, 2, 1, 1, 2, 2), seed=8)
    before = jax.config.jax_enable_x64
    o, _ = jax_recurrent_gated_delta_rule(**args)
    assert o.dtype == np.float64
    assert jax.config.jax_enable_x64 == before
    if not before:
        assert jnp.zeros(1).dtype == jnp.float32


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_references_does_not_import_jax():
    result = _run_python("import sys, gdn_verify.reference; print('jax' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_missing_jax_names_the_extra():
    result = _run_python(
        "import sys; sys.modules['jax'] = None\n"  # makes `import jax` raise ImportError
        "import numpy as np\n"
        "from gdn_verify.reference import jax_recurrent_gated_delta_rule as f\n"
        "z = np.zeros((1, 2, 1, 2)); gb = np.zeros((1, 2, 1))\n"
        "try:\n"
        "    f(z, z, z, gb, gb)\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "gdn-verify[jax]"' in result.stdout
