"""The float64 references of a case: the torch recurrence every check is against, and the
chunked and JAX references, checked against it (`--jax`, `gdn-verify selfcheck`)."""

from __future__ import annotations

from typing import Sequence

import torch

from gdn_verify.cases import Case
from gdn_verify.compare import TENSORS, rms_ratio
from gdn_verify.tolerances import REFERENCE_AGREEMENT
from gdn_verify.conventions import gdn_args, gdn_kwargs
from gdn_verify.inputs import make_inputs, to_device


def torch_reference(case: Case, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from gdn_verify.reference import recurrent_gated_delta_rule

    o, final_state = recurrent_gated_delta_rule(*gdn_args(inputs), **gdn_kwargs(case, inputs),
                                                l2norm=case.l2norm, dtype=torch.float64)
    return {"o": o, "final_state": final_state}


def other_references(case: Case, inputs: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, dict]:
    """Outputs of the chunked and/or JAX references (float64, on the CPU), by name."""
    out = {}
    if "chunked" in names:
        from gdn_verify.reference import chunked_gated_delta_rule

        o, final_state = chunked_gated_delta_rule(*gdn_args(inputs), **gdn_kwargs(case, inputs),
                                                  l2norm=case.l2norm)[:2]
        out["chunked"] = {"o": o.cpu(), "final_state": final_state.cpu()}
    if "jax" in names:
        from gdn_verify.reference import jax_recurrent_gated_delta_rule

        host = {name: t.cpu() for name, t in inputs.items()}
        o, final_state = jax_recurrent_gated_delta_rule(*gdn_args(host), **gdn_kwargs(case, host),
                                                        l2norm=case.l2norm)[:2]
        out["jax"] = {"o": torch.from_numpy(o), "final_state": torch.from_numpy(final_state)}
    return out


def _agreement(name: str, theirs: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    ratios = {t: rms_ratio(theirs[t], reference[t].cpu()) for t in TENSORS}
    return {"reference": name, **ratios, "bound": REFERENCE_AGREEMENT,
            "passed": all(r <= REFERENCE_AGREEMENT for r in ratios.values())}


def jax_agreement(case: Case, inputs: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """The JAX reference against the torch one: RMS ratios, and whether they agree."""
    return _agreement("jax", other_references(case, inputs, ("jax",))["jax"], reference)


def reference_agreement(cases: Sequence[Case], device: str) -> list[dict]:
    """Every other reference that applies to each case, against the torch recurrence."""
    rows = []
    for case in cases:
        inputs = to_device(make_inputs(case), device)
        reference = torch_reference(case, inputs)
        names = [n for n in ("chunked", "jax") if n in case.references]
        for name, theirs in other_references(case, inputs, names).items():
            rows.append({"case": case.id, **_agreement(name, theirs, reference)})
    return rows
