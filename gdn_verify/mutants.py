"""Mutants as data: text substitutions that plant a known GDN bug in a kernel's sources.

A `Mutant` is a list of `Edit`s (file relative to the mutated package's directory, anchor ->
replacement). An anchor must occur exactly once in its file: a missing or repeated anchor
raises `MutantError`, so an edit of the kernels cannot turn a mutant into a silent no-op.

`MUTANTS` is the registry for our own kernels (files under kernels/). Mutants of any other
package come from a file (`load_mutants`), TOML or JSON:

    package = "fla"                  # optional: the importable package the files lie in
    impl = "fla-chunk"               # optional: the --impl the mutated copies are run as
    device = "cuda"                  # optional: where they run (cpu: Triton's interpreter)

    [[mutant]]
    name = "short-name"              # unique
    bug_class = "what the bug is, in words"
    kills = ["case id", ...]         # optional: cases known to catch it
    golden_only = false              # optional: only a bitwise comparison can see it
    [[mutant.edit]]
    file = "ops/gated_delta_rule/chunk.py"   # relative to the package's directory
    anchor = "exact text, present once"
    replacement = "the text that replaces it"

JSON holds the same keys ({"package": ..., "mutant": [{"name": ..., "edit": [{...}]}]}).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# The compile-variant audit, named like a case in results and in `Mutant.kills`.
AUDIT = "variant-audit"

class MutantError(ValueError):
    """A mutant cannot be applied (anchor missing or ambiguous) or is unknown."""



@dataclass(frozen=True)
class Edit:
    file: str  # path under kernels/
    anchor: str  # exact text, present exactly once in the file
    replacement: str


@dataclass(frozen=True)
class Mutant:
    name: str
    bug_class: str
    edits: tuple[Edit, ...]
    # Smallest set of cpu-suite case ids (or AUDIT) known to kill the mutant: what the tests
    # run, next to the unmutated tree on the same ids.
    kills: tuple[str, ...]
    # Only a bitwise comparison with goldens can see it (the change is within every tolerance).
    golden_only: bool = False


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "block-size-from-t",
        "block size derived from T for short batches (BT = next_power_of_2(T) below 64)",
        (Edit("cumsum.py", "FLOOR: tl.constexpr):", "FLOOR: tl.constexpr, BT: tl.constexpr):"),
         Edit("cumsum.py", "rows = tl.arange(0, CHUNK)", "rows = tl.arange(0, BT)"),
         Edit("cumsum.py", "BLOCK_HV=next_power_of_2(HV),",
              "BLOCK_HV=next_power_of_2(HV), BT=min(CHUNK.value, next_power_of_2(g.shape[1])),")),
        kills=(AUDIT,),
    ),
    Mutant(
        "mask-after-exp",
        "causal mask applied after exp instead of before (0 * inf = NaN under strong decay)",
        (Edit("_common.py", "return tl.where(mask, tl.exp(tl.where(mask, diff, 0.0)), 0.0)",
              "return tl.exp(diff) * tl.where(mask, 1.0, 0.0)"),),
        kills=("dense-b1-t17-h1x2-d16-bf16-gstrong-beta0-state0",),
    ),
    Mutant(
        "factored-exp",
        "decay factored as exp(gam_i) * exp(-gam_j) (overflow under strong decay)",
        (Edit("output.py", "* masked_exp(gam[:, None] - gam[None, :], causal)",
              "* tl.where(causal, tl.exp(gam)[:, None] * tl.exp(-gam)[None, :], 0.0)"),),
        kills=("dense-b1-t17-h1x2-d16-bf16-gstrong-beta0-state0",),
    ),
    Mutant(
        "gate-second-to-last",
        "gate at the chunk end read at the second-to-last position of a partial chunk",
        (Edit("recurrence.py", "gam_last = tl.load(g_cum_ptr + (t0 + length - 1) * HV + hv)",
              "gam_last = tl.load(g_cum_ptr + (t0 + tl.where(length < CHUNK, tl.maximum(length - 2, 0), "
              "length - 1)) * HV + hv)"),),
        kills=("dense-b1-t3-h1x2-d16-f64-gstrong-state0",),
    ),
    Mutant(
        "state-transposed",
        "final state stored transposed ([V, K] instead of [K, V])",
        (Edit("recurrence.py", "tl.store(ht_ptr + head_state + state_tile, state, mask=state_mask)",
              "tl.store(ht_ptr + head_state + vcols[None, :] * K + kcols[:, None], state, mask=state_mask)"),),
        kills=("dense-b1-t2-h1x2-d16-f64-beta1",),
    ),
    Mutant(
        "initial-state-first-seq-only",
        "initial state applied only to the first sequence of a packed batch",
        (Edit("recurrence.py", "state = tl.load(h0_ptr + head_state + state_tile, mask=state_mask, other=0.0)",
              "state = tl.where(n == 0, tl.load(h0_ptr + head_state + state_tile, mask=state_mask, other=0.0), 0.0)"),),
        kills=("varlen-64.1.0-h1x2-d16-f32-gstrong-state0",),
    ),
    Mutant(
        "zero-length-shifts-chunk-map",
        "a zero-length sequence shifts the chunk map of the sequences after it "
        "(sequence of a chunk counted from chunks with local index 0)",
        (Edit("chunk_map.py",
              "    chunk_seq = torch.repeat_interleave(\n"
              "        torch.arange(problem.N, dtype=torch.int32, device=device), counts, output_size=n_chunks)",
              "    local_chunk = torch.arange(n_chunks, device=device) - torch.repeat_interleave(\n"
              "        seq_first_chunk[:-1], counts, output_size=n_chunks)\n"
              "    chunk_seq = (local_chunk == 0).cumsum(0, dtype=torch.int32) - 1"),),
        kills=("varlen-5.0.70-h1x2-d16-f32-beta1",),
    ),
    Mutant(
        "beta-through-bf16",
        "beta rounded through bfloat16 before use",
        (Edit("kkt_solve.py", "from ._triton_compat import dot", "from ._triton_compat import cast_to, dot"),
         Edit("kkt_solve.py", "beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)",
              "beta = cast_to(tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0), tl.bfloat16).to(ACC)"),
         Edit("recurrence.py", "from ._triton_compat import dot, loop_bound",
              "from ._triton_compat import cast_to, dot, loop_bound"),
         Edit("recurrence.py", "beta = tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0).to(ACC)",
              "beta = cast_to(tl.load(beta_ptr + tokens * HV + hv, mask=valid, other=0.0), tl.bfloat16).to(ACC)")),
        kills=("dense-b1-t33-h1x2-d16-f64-gzero",),
    ),
    Mutant(
        "partial-chunk-length-off-by-one",
        "the last partial chunk's length one short",
        (Edit("chunk_map.py", "length = tl.minimum(eos - first_token, CHUNK)",
              "remaining = eos - first_token\n"
              "    length = tl.where(remaining < CHUNK, remaining - 1, CHUNK)"),),
        kills=("dense-b1-t2-h1x2-d16-f64-beta1",),
    ),
    Mutant(
        "no-decay-between-chunks",
        "decay exp(gam_last) not applied to the state carried into the next chunk",
        (Edit("recurrence.py", "state = state * tl.exp(gam_last) + raw_dot(", "state = state + raw_dot("),),
        kills=("dense-b1-t3-h1x2-d16-f64-gstrong-state0",),
    ),
    Mutant(
        "gva-wrong-key-head",
        "wrong key head for a value head under GVA (hv % H instead of hv // (HV / H))",
        (Edit("kkt_solve.py", "kh = hv // GROUP", "kh = hv % H"),
         Edit("recurrence.py", "kh = hv // GROUP", "kh = hv % H"),
         Edit("output.py", "kh = hv // GROUP", "kh = hv % H")),
        kills=("dense-b1-t7-h2x4-d16-f32-gzero-state0",),
    ),
    Mutant(
        # Distributing the default scale would change nothing: K = 16 gives 0.25, a power of two.
        "v-new-reassociated",
        "beta distributed over the sum in V' = beta (v - exp(gam) K S): a few ULPs, within every tolerance",
        (Edit("recurrence.py", "beta[:, None] * (v - tl.exp(gam)[:, None] * ks)",
              "beta[:, None] * v - beta[:, None] * (tl.exp(gam)[:, None] * ks)"),),
        kills=("dense-b1-t7-h2x4-d16-f32-gzero-state0",),
        golden_only=True,
    ),
)


def apply_edit(text: str, edit: Edit, mutant: str = "?", where: str = "kernels/") -> str:
    """text with edit's anchor replaced; MutantError unless the anchor occurs exactly once.
    where: how messages name the package directory the file lies in."""
    count = text.count(edit.anchor)
    if count == 0:
        raise MutantError(f"mutant {mutant}: pattern not found in {where}{edit.file}: {edit.anchor!r}")
    if count > 1:
        raise MutantError(f"mutant {mutant}: pattern matches {count} times in {where}{edit.file}: "
                          f"{edit.anchor!r}")
    return text.replace(edit.anchor, edit.replacement)


@dataclass(frozen=True)
class MutantSet:
    """Mutants read from a file, with the package they edit and how the copies are run."""

    path: str
    mutants: tuple[Mutant, ...]
    package: str | None = None
    impl: str | None = None
    device: str | None = None
    notes: dict = field(default_factory=dict)


_TOP_KEYS = {"package", "impl", "device", "mutant", "description"}
_MUTANT_KEYS = {"name", "bug_class", "kills", "golden_only", "edit", "description"}
_EDIT_KEYS = {"file", "anchor", "replacement"}


def _text(where: str, value, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MutantError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


def _edit(where: str, data) -> Edit:
    if not isinstance(data, dict):
        raise MutantError(f"{where}: expected a table with {sorted(_EDIT_KEYS)}, got {data!r}")
    if set(data) != _EDIT_KEYS:
        raise MutantError(f"{where}: expected exactly the keys {sorted(_EDIT_KEYS)}, got {sorted(data)}")
    file = _text(where, data["file"], "file")
    if file.startswith("/") or ".." in Path(file).parts or not file.endswith(".py"):
        raise MutantError(f"{where}: file {file!r} must be a .py path relative to the package directory")
    anchor = _text(where, data["anchor"], "anchor")
    if not isinstance(data["replacement"], str) or data["replacement"] == anchor:
        raise MutantError(f"{where}: replacement must be a string that differs from the anchor")
    return Edit(file, anchor, data["replacement"])


def parse_mutants(data: dict, path: str = "<mutants>") -> MutantSet:
    """A MutantSet from a parsed mutants file; MutantError naming the entry that is wrong."""
    if not isinstance(data, dict):
        raise MutantError(f"{path}: expected a table at the top level")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise MutantError(f"{path}: unknown keys {unknown}; expected some of {sorted(_TOP_KEYS)}")
    entries = data.get("mutant")
    if not isinstance(entries, list) or not entries:
        raise MutantError(f"{path}: no [[mutant]] entries")
    mutants, names = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: mutant {i + 1}"
        if not isinstance(entry, dict):
            raise MutantError(f"{where}: expected a table")
        unknown = sorted(set(entry) - _MUTANT_KEYS)
        if unknown:
            raise MutantError(f"{where}: unknown keys {unknown}; expected some of {sorted(_MUTANT_KEYS)}")
        name = _text(where, entry.get("name"), "name")
        where = f"{path}: mutant {name!r}"
        if name in names:
            raise MutantError(f"{where}: named twice")
        names.add(name)
        edits = entry.get("edit")
        if not isinstance(edits, list) or not edits:
            raise MutantError(f"{where}: no [[mutant.edit]] entries")
        kills = entry.get("kills", [])
        if not isinstance(kills, list) or not all(isinstance(k, str) for k in kills):
            raise MutantError(f"{where}: kills must be a list of case ids")
        golden_only = entry.get("golden_only", False)
        if not isinstance(golden_only, bool):
            raise MutantError(f"{where}: golden_only must be true or false")
        mutants.append(Mutant(name, _text(where, entry.get("bug_class"), "bug_class"),
                              tuple(_edit(f"{where} edit {j + 1}", e) for j, e in enumerate(edits)),
                              tuple(kills), golden_only))
    settings = {}
    for key in ("package", "impl", "device"):
        if key in data:
            settings[key] = _text(path, data[key], key)
    return MutantSet(path, tuple(mutants), **settings)


def load_mutants(path: str | Path) -> MutantSet:
    """Read a mutants file (TOML, or JSON when it ends in .json); MutantError if it cannot be
    read or is malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MutantError(f"--mutants {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MutantError(f"--mutants {path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
    return parse_mutants(data, str(path))


def select_mutants(mutants: Sequence[Mutant], names: Sequence[str] | None) -> list[Mutant]:
    """The named mutants of a list in its order (all when names is empty or None)."""
    if not names:
        return list(mutants)
    known = {m.name for m in mutants}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MutantError(f"mutant: unknown {unknown}; expected names from {sorted(known)}")
    return [m for m in mutants if m.name in set(names)]
