"""Every error of gdn_verify.contract.validate, as data (PyTorch OpInfo "error inputs" style):
a mutation of good arguments, the argument the message must name, and what it must expect."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from gdn_verify.contract import GDNInputError, validate
from gdn_verify.reference import (
    chunked_gated_delta_rule,
    jax_recurrent_gated_delta_rule,
    recurrent_gated_delta_rule,
)

B, T, H, HV, K, V = 1, 4, 2, 4, 8, 6


def good_args() -> dict:
    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    gen = torch.Generator().manual_seed(0)
    return dict(q=randn(B, T, H, K), k=randn(B, T, H, K), v=randn(B, T, HV, V), g=-randn(B, T, HV).abs(),
                beta=torch.rand(B, T, HV, generator=gen), scale=None, initial_state=randn(B, HV, K, V),
                output_final_state=True, cu_seqlens=None, l2norm=False)


def meta(x: torch.Tensor) -> torch.Tensor:
    """The same tensor on another device (the meta device exists on every machine)."""
    return x.to("meta")


def offsets(*values, dtype=torch.int32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


@dataclass(frozen=True)
class ErrorInput:
    description: str
    mutate: Callable[[dict], dict]  # good arguments -> the changed ones
    argument: str  # the message must start with "<argument>: expected"
    pattern: str  # regex the message must contain (what was expected, what was given)


E = ErrorInput
ERROR_INPUTS = [
    E("q-not-a-tensor", lambda a: dict(q=a["q"].tolist()), "q", r"a tensor of shape \[B, T, H, K\], got list"),
    E("q-3d", lambda a: dict(q=a["q"][0]), "q", r"a 4-D tensor of shape \[B, T, H, K\], got shape \(4, 2, 8\)"),
    E("q-no-heads", lambda a: dict(q=a["q"][:, :, :0], k=a["k"][:, :, :0]), "q",
      r"at least one head \(H >= 1\), got shape \(1, 4, 0, 8\)"),
    E("q-K-too-large", lambda a: dict(q=torch.zeros(B, T, H, 257), k=torch.zeros(B, T, H, 257)), "q",
      r"head dimension K in 1\.\.256, got K = 257"),
    E("q-K-zero", lambda a: dict(q=a["q"][..., :0], k=a["k"][..., :0]), "q", r"head dimension K in 1\.\.256, got K = 0"),
    E("q-integer-dtype", lambda a: {n: a[n].to(torch.int32) for n in ("q", "k", "v")}, "q",
      r"dtype in \('float64', 'float32', 'float16', 'bfloat16'\), got int32"),
    E("k-none", lambda a: dict(k=None), "k", r"a tensor of shape \[B, T, H, K\], got NoneType"),
    E("k-5d", lambda a: dict(k=a["k"][None]), "k", r"a 4-D tensor .* got shape \(1, 1, 4, 2, 8\)"),
    E("k-other-K", lambda a: dict(k=a["k"][..., :7]), "k", r"shape \(1, 4, 2, 8\) \(same as q\), got shape \(1, 4, 2, 7\)"),
    E("k-other-dtype", lambda a: dict(k=a["k"].double()), "k", r"dtype float32 \(same as q\), got float64"),
    E("k-other-device", lambda a: dict(k=meta(a["k"])), "k", r"a tensor on cpu \(q's device\), got device meta"),
    E("v-not-a-tensor", lambda a: dict(v=a["v"].numpy().tolist()), "v", r"a tensor of shape \[B, T, HV, V\], got list"),
    E("v-3d", lambda a: dict(v=a["v"][0]), "v", r"a 4-D tensor of shape \[B, T, HV, V\], got shape \(4, 4, 6\)"),
    E("v-other-T", lambda a: dict(v=a["v"][:, :3]), "v", r"shape \[1, 4, HV, V\] \(B and T of q\), got shape \(1, 3, 4, 6\)"),
    E("v-HV-not-multiple-of-H", lambda a: dict(v=a["v"][:, :, :3]), "v",
      r"a value-head count HV that is a positive multiple of H = 2, got HV = 3"),
    E("v-no-heads", lambda a: dict(v=a["v"][:, :, :0]), "v", r"positive multiple of H = 2, got HV = 0"),
    E("v-V-too-large", lambda a: dict(v=torch.zeros(B, T, HV, 300)), "v", r"head dimension V in 1\.\.256, got V = 300"),
    E("v-other-dtype", lambda a: dict(v=a["v"].half()), "v", r"dtype float32 \(same as q\), got float16"),
    E("v-other-device", lambda a: dict(v=meta(a["v"])), "v", r"a tensor on cpu \(q's device\), got device meta"),
    E("g-not-a-tensor", lambda a: dict(g=0.0), "g", r"a tensor of shape \[B, T, HV\], got float"),
    E("g-4d", lambda a: dict(g=a["g"][..., None]), "g", r"a 3-D tensor of shape \[B, T, HV\], got shape \(1, 4, 4, 1\)"),
    E("g-per-key-head", lambda a: dict(g=a["g"][:, :, :H]), "g", r"shape \(1, 4, 4\) = \[B, T, HV\], got shape \(1, 4, 2\)"),
    E("g-float16-with-float32-q", lambda a: dict(g=a["g"].half()), "g",
      r"dtype in \('float32',\) \(q's dtype or float32\), got float16"),
    E("g-float64-with-bfloat16-q", lambda a: {n: a[n].bfloat16() for n in ("q", "k", "v")} | dict(g=a["g"].double()),
      "g", r"dtype in \('bfloat16', 'float32'\) \(q's dtype or float32\), got float64"),
    E("g-other-device", lambda a: dict(g=meta(a["g"])), "g", r"a tensor on cpu \(q's device\), got device meta"),
    E("beta-not-a-tensor", lambda a: dict(beta=[1.0] * T), "beta", r"a tensor of shape \[B, T, HV\], got list"),
    E("beta-2d", lambda a: dict(beta=a["beta"][0]), "beta", r"a 3-D tensor of shape \[B, T, HV\], got shape \(4, 4\)"),
    E("beta-other-T", lambda a: dict(beta=a["beta"][:, :2]), "beta", r"shape \(1, 4, 4\) = \[B, T, HV\], got shape \(1, 2, 4\)"),
    E("beta-int", lambda a: dict(beta=a["beta"].to(torch.int64)), "beta",
      r"dtype in \('float32',\) \(q's dtype or float32\), got int64"),
    E("beta-other-device", lambda a: dict(beta=meta(a["beta"])), "beta", r"a tensor on cpu \(q's device\), got device meta"),
    E("cu_seqlens-list", lambda a: dict(cu_seqlens=[0, 4]), "cu_seqlens", r"a 1-D int32/int64 tensor \[N\+1\], got list"),
    E("cu_seqlens-float", lambda a: dict(cu_seqlens=torch.tensor([0.0, 4.0])), "cu_seqlens",
      r"dtype int32 or int64, got float32"),
    E("cu_seqlens-2d", lambda a: dict(cu_seqlens=offsets(0, 4)[None]), "cu_seqlens",
      r"a 1-D tensor of at least 2 offsets \[N\+1\], got shape \(1, 2\)"),
    E("cu_seqlens-one-offset", lambda a: dict(cu_seqlens=offsets(0)), "cu_seqlens",
      r"at least 2 offsets \[N\+1\], got shape \(1,\)"),
    E("cu_seqlens-other-device", lambda a: dict(cu_seqlens=meta(offsets(0, 4))), "cu_seqlens",
      r"a tensor on cpu \(q's device\), got device meta"),
    E("cu_seqlens-with-batch-2", lambda a: {n: torch.cat([a[n], a[n]]) for n in ("q", "k", "v", "g", "beta")}
      | dict(cu_seqlens=offsets(0, 4), initial_state=None), "q",
      r"batch size B = 1 when cu_seqlens packs the sequences, got B = 2"),
    E("cu_seqlens-not-from-0", lambda a: dict(cu_seqlens=offsets(1, 4)), "cu_seqlens", r"first offset 0, got cu_seqlens\[0\] = 1"),
    E("cu_seqlens-decreasing", lambda a: dict(cu_seqlens=offsets(0, 3, 2, 4, dtype=torch.int64), initial_state=None),
      "cu_seqlens", r"non-decreasing offsets, got cu_seqlens\[1\] = 3 > cu_seqlens\[2\] = 2"),
    E("cu_seqlens-short-of-T", lambda a: dict(cu_seqlens=offsets(0, 1, 3)), "cu_seqlens",
      r"last offset equal to T = 4, got cu_seqlens\[-1\] = 3"),
    E("cu_seqlens-past-T", lambda a: dict(cu_seqlens=offsets(0, 5)), "cu_seqlens",
      r"last offset equal to T = 4, got cu_seqlens\[-1\] = 5"),
    E("initial_state-not-a-tensor", lambda a: dict(initial_state=0.0), "initial_state",
      r"a tensor of shape \[N, HV, K, V\], got float"),
    E("initial_state-3d", lambda a: dict(initial_state=a["initial_state"][0]), "initial_state",
      r"a 4-D tensor of shape \[N, HV, K, V\], got shape \(4, 8, 6\)"),
    E("initial_state-transposed", lambda a: dict(initial_state=a["initial_state"].mT), "initial_state",
      r"shape \(1, 4, 8, 6\) = \[N, HV, K, V\], got shape \(1, 4, 6, 8\)"),
    E("initial_state-per-batch-row-when-packed", lambda a: dict(cu_seqlens=offsets(0, 2, 2, 4)), "initial_state",
      r"shape \(3, 4, 8, 6\) = \[N, HV, K, V\], got shape \(1, 4, 8, 6\)"),
    E("initial_state-float64-for-float32-q", lambda a: dict(initial_state=a["initial_state"].double()),
      "initial_state", r"dtype float32, got float64"),
    E("initial_state-bfloat16", lambda a: dict(initial_state=a["initial_state"].bfloat16()),
      "initial_state", r"dtype float32, got bfloat16"),
    E("initial_state-float32-for-float64-q",
      lambda a: {n: a[n].double() for n in ("q", "k", "v", "g", "beta")}, "initial_state", r"dtype float64, got float32"),
    E("initial_state-other-device", lambda a: dict(initial_state=meta(a["initial_state"])), "initial_state",
      r"a tensor on cpu \(q's device\), got device meta"),
    E("scale-nan", lambda a: dict(scale=math.nan), "scale", r"None or a finite real number, got nan"),
    E("scale-inf", lambda a: dict(scale=-math.inf), "scale", r"None or a finite real number, got -inf"),
    E("scale-string", lambda a: dict(scale="0.5"), "scale", r"None or a finite real number, got '0\.5'"),
    E("scale-bool", lambda a: dict(scale=True), "scale", r"None or a finite real number, got True"),
    E("scale-complex", lambda a: dict(scale=0.5j), "scale", r"None or a finite real number, got 0\.5j"),
    E("scale-tensor", lambda a: dict(scale=torch.tensor(0.5)), "scale", r"None or a finite real number, got tensor"),
    E("scale-overflows-float", lambda a: dict(scale=10**400), "scale", r"None or a finite real number, got 1000"),
    E("cu_seqlens-numpy-with-torch-q", lambda a: dict(cu_seqlens=np.array([0, T], dtype=np.int32)), "cu_seqlens",
      r"a torch tensor \(q is one\), got numpy\.ndarray"),
    E("g-numpy-with-torch-q", lambda a: dict(g=a["g"].numpy()), "g", r"a torch tensor \(q is one\), got numpy\.ndarray"),
    E("initial_state-numpy-with-torch-q", lambda a: dict(initial_state=a["initial_state"].numpy()), "initial_state",
      r"a torch tensor \(q is one\), got numpy\.ndarray"),
    E("output_final_state-int", lambda a: dict(output_final_state=1), "output_final_state", r"a bool, got 1"),
    E("output_final_state-none", lambda a: dict(output_final_state=None), "output_final_state", r"a bool, got None"),
    E("l2norm-string", lambda a: dict(l2norm="yes"), "l2norm", r"a bool, got 'yes'"),
]


def _message_checks(err: Exception, argument: str, pattern: str) -> None:
    message = str(err)
    assert message.startswith(f"{argument}: expected "), message
    assert re.search(pattern, message), f"{message!r} does not match {pattern!r}"


@pytest.mark.parametrize("error", ERROR_INPUTS, ids=lambda e: e.description)
def test_error_inputs(error: ErrorInput):
    args = good_args()
    validate(**args)  # the unmutated arguments are good
    args.update(error.mutate(args))
    with pytest.raises(GDNInputError) as info:
        validate(**args)
    assert isinstance(info.value, ValueError)
    _message_checks(info.value, error.argument, error.pattern)


def test_error_names_the_callers_l2norm_argument():
    with pytest.raises(GDNInputError) as info:
        validate(**dict(good_args(), l2norm=1), l2norm_arg="use_qk_l2norm_in_kernel")
    _message_checks(info.value, "use_qk_l2norm_in_kernel", r"a bool, got 1")


@pytest.mark.parametrize("reference", [recurrent_gated_delta_rule, chunked_gated_delta_rule,
                                       jax_recurrent_gated_delta_rule],
                         ids=["recurrent", "chunked", "jax"])
def test_references_validate_first(reference):
    with pytest.raises(GDNInputError) as info:
        reference(**dict(good_args(), beta=good_args()["beta"][:, :, :1]))
    _message_checks(info.value, "beta", r"shape \(1, 4, 4\) = \[B, T, HV\]")


def test_good_arguments_give_the_problem_sizes():
    p = validate(**good_args())
    assert (p.B, p.T, p.H, p.HV, p.K, p.V, p.N, p.group) == (B, T, H, HV, K, V, 1, 2)
    assert p.scale == K**-0.5 and p.dtype == "float32" and p.device == "cpu" and p.seq_lens == (T,)


def test_zero_length_sequences_are_legal():
    args = dict(good_args(), cu_seqlens=offsets(0, 0, 3, 3, 4, 4), initial_state=torch.zeros(5, HV, K, V))
    assert validate(**args).seq_lens == (0, 3, 0, 1, 0)
    empty = {n: good_args()[n][:, :0] for n in ("q", "k", "v", "g", "beta")}
    assert validate(**empty, cu_seqlens=offsets(0, 0)).seq_lens == (0,)


def test_jax_arrays_with_numpy_offsets_share_the_host_device():
    jnp = pytest.importorskip("jax.numpy")
    args = {n: jnp.asarray(x.numpy()) if torch.is_tensor(x) else x for n, x in good_args().items()}
    args.update(cu_seqlens=np.array([0, 1, 4], dtype=np.int32), initial_state=None)
    assert validate(**args).seq_lens == (1, 3)
