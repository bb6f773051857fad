"""What a comparison with goldens found: per-tensor diffs (bit for bit, or by digest for a
golden stored as its digest only), one case's comparison, and what a regeneration did."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gdn_verify.bitwise import BitDiff, bit_diff
from gdn_verify.golden_files import STORED_DIGEST, tensor_dtype_name, tensor_sha256, tensor_summary

DIGEST_ONLY_HINT = (
    "a digest-only golden gives no ULP statistics; to get them, regenerate full goldens into a "
    "scratch directory on the commit that wrote these ones (`gdn-verify golden regen --suite S "
    "--goldens SCRATCH --max-golden-bytes 4G`), then run `gdn-verify golden diff --suite S "
    "--goldens SCRATCH` on this one"
)

# Rows of kept unused goldens a regen table lists by name (the headline counts them all): a run
# of one dtype's or one shard's cases leaves most of a store unused.
UNUSED_ROWS = 10
SUMMARY_COUNTS = ("n_nan", "n_posinf", "n_neginf")
SUMMARY_VALUES = ("finite_sum", "finite_l2", "finite_max_abs")


@dataclass(frozen=True)
class DigestDiff:
    """A new tensor against a golden stored as its digest only: equal when the sha256 of its
    bytes matches; when not, the golden's and the new summary numbers (no ULP statistics)."""

    dtype: str
    shape: tuple[int, ...]
    stored_sha256: str
    new_sha256: str
    stored_summary: dict
    new_summary: dict | None = None  # computed only when the digests differ

    @property
    def equal(self) -> bool:
        return self.stored_sha256 == self.new_sha256

    def deltas(self) -> dict:
        """New minus golden, for every summary number (empty when equal)."""
        if self.new_summary is None:
            return {}
        return {k: self.new_summary[k] - self.stored_summary[k] for k in SUMMARY_COUNTS + SUMMARY_VALUES}

    def detail(self) -> str:
        """The summary numbers that moved, golden -> now, values at full (repr) precision."""
        if self.new_summary is None:
            return ""
        old, new = self.stored_summary, self.new_summary
        clauses = [f"{k} {old[k]!r} -> {new[k]!r} ({new[k] - old[k]:+.3g})" for k in SUMMARY_VALUES if old[k] != new[k]]
        counts = [f"{k} {old[k]} -> {new[k]}" for k in SUMMARY_COUNTS if old[k] != new[k]]
        return "; ".join(clauses + counts) or "summary numbers unchanged"

    def summary(self) -> str:
        if self.equal:
            return f"bitwise equal (sha256; golden stored as digest only, {math.prod(self.shape)} elements)"
        return f"different (digest only): sha256 {self.stored_sha256[:12]} -> {self.new_sha256[:12]}; {self.detail()}"

    def to_json(self) -> dict:
        return {
            "digest_only": True,
            "equal": self.equal,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "n_elements": math.prod(self.shape),
            "stored_sha256": self.stored_sha256,
            "new_sha256": self.new_sha256,
            "stored_summary": self.stored_summary,
            "new_summary": self.new_summary,
            "deltas": self.deltas(),
            "detail": self.detail(),
            "hint": None if self.equal else DIGEST_ONLY_HINT,
        }


def digest_diff(new: torch.Tensor, meta: dict) -> DigestDiff:
    """Compare a tensor with a digest-only golden (its manifest entry; same dtype and shape)."""
    new_sha = tensor_sha256(new)
    return DigestDiff(
        dtype=meta["dtype"],
        shape=tuple(meta["shape"]),
        stored_sha256=meta["sha256"],
        new_sha256=new_sha,
        stored_summary=meta["summary"],
        new_summary=None if new_sha == meta["sha256"] else tensor_summary(new),
    )


TensorDiff = BitDiff | DigestDiff | str


def diff_tensors(
    new: dict[str, torch.Tensor], golden: dict[str, dict], stored: dict[str, torch.Tensor]
) -> dict[str, TensorDiff]:
    """Per tensor name: a BitDiff (golden stored in full), a DigestDiff (golden stored as its
    digest only), or a sentence when the tensor cannot be compared bit for bit (present on one
    side only, or its dtype/shape changed). golden: the entry's tensor metadata; stored: the
    full tensors `load` returned."""
    diffs: dict[str, TensorDiff] = {}
    for name in sorted(set(new) | set(golden)):
        if name not in golden:
            diffs[name] = "new tensor, not in the golden"
        elif name not in new:
            diffs[name] = "in the golden, not produced now"
        elif tensor_dtype_name(new[name]) != golden[name]["dtype"] or list(new[name].shape) != list(golden[name]["shape"]):
            diffs[name] = (
                f"golden {golden[name]['dtype']}{list(golden[name]['shape'])} -> "
                f"now {tensor_dtype_name(new[name])}{list(new[name].shape)}"
            )
        elif golden[name]["stored"] == STORED_DIGEST:
            diffs[name] = digest_diff(new[name], golden[name])
        else:
            diffs[name] = bit_diff(new[name], stored[name])
    return diffs


def all_tensors_equal(diffs: dict[str, TensorDiff]) -> bool:
    return all(not isinstance(d, str) and d.equal for d in diffs.values())


def _diffs_json(diffs: dict[str, TensorDiff]) -> dict:
    return {name: d if isinstance(d, str) else d.to_json() for name, d in diffs.items()}


def _changed_text(diffs: dict[str, TensorDiff]) -> str:
    """The tensors that changed, one clause each."""
    return "; ".join(
        f"{name}: {d if isinstance(d, str) else d.summary()}"
        for name, d in diffs.items()
        if isinstance(d, str) or not d.equal
    )


def digest_only_differs(diffs: dict[str, TensorDiff]) -> bool:
    return any(isinstance(d, DigestDiff) and not d.equal for d in diffs.values())


@dataclass(frozen=True)
class GoldenComparison:
    """Outcome of comparing one case's outputs with its golden.

    status: "equal" | "different" (diffs say how) | "missing" (no golden for this case id) |
    "inputs-changed" (the golden was made from other inputs: not compared bitwise).
    """

    case_id: str
    status: str
    diffs: dict[str, TensorDiff] = field(default_factory=dict)
    stored_inputs_digest: str | None = None

    def to_json(self) -> dict:
        return {
            "case_id": self.case_id,
            "status": self.status,
            "diffs": _diffs_json(self.diffs),
            "stored_inputs_digest": self.stored_inputs_digest,
        }



@dataclass(frozen=True)
class CaseChange:
    """One case id in a regeneration and what happened to it."""

    case_id: str
    diffs: dict[str, TensorDiff] = field(default_factory=dict)  # new run vs stored golden
    stored_inputs_digest: str | None = None
    new_inputs_digest: str | None = None
    rewritten: bool = False  # only with force
    note: str = ""

    def to_json(self) -> dict:
        return {
            "case_id": self.case_id,
            "diffs": _diffs_json(self.diffs),
            "stored_inputs_digest": self.stored_inputs_digest,
            "new_inputs_digest": self.new_inputs_digest,
            "rewritten": self.rewritten,
            "note": self.note,
        }


@dataclass
class RegenReport:
    """What `regenerate` did, per case id.

    added: new case ids, written. kept: existing goldens left alone (their diffs say whether
    the new run's bits agree; under force only bitwise-equal ones are kept). replaced (force
    only): rewritten, with the diff against what was replaced. inputs_changed: stored goldens
    made from other inputs (never diffed; rewritten only with force). corrupt: stored files
    that failed verification (rewritten only with force). unused: case ids in the store that
    this run did not select (removed only by a prune that runs). restored: kept goldens whose
    bits the run reproduced, rewritten only to follow the store's size cap (payload added or
    dropped). n_tensors / n_digest_only: the store's tensors after the write, and those stored
    as their digest only under max_tensor_bytes.
    not_written: (case id, reason) of the selected cases that did not pass (failed, errored or
    did not run), as the caller gave them; `incomplete` is true when there is any, and the run
    must not count as a successful regeneration. prune_refused: why a requested prune did not
    run (None when it ran or was not requested). deleted: the names of the files removed from
    the store's directory, every one (files the replaced manifest named and the new one does
    not, and what an interrupted writer left). autotune_conflicts: keys this writer's autotuners
    settled otherwise than the store records (its goldens of the cases using them may follow
    another config than the record's). autotune_recorded / autotune_added: the choices the
    store's record holds after the write, and how many of them this writer added.
    """

    platform_key: str
    directory: Path
    force: bool
    max_tensor_bytes: int
    added: list[str] = field(default_factory=list)
    kept: list[CaseChange] = field(default_factory=list)
    replaced: list[CaseChange] = field(default_factory=list)
    inputs_changed: list[CaseChange] = field(default_factory=list)
    corrupt: list[CaseChange] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    n_tensors: int = 0
    n_digest_only: int = 0
    bytes_written: int = 0
    not_written: list[tuple[str, str]] = field(default_factory=list)
    prune_refused: str | None = None
    deleted: list[str] = field(default_factory=list)
    autotune_conflicts: list[str] = field(default_factory=list)  # gdn_verify.autotune.conflicts
    autotune_recorded: int = 0
    autotune_added: int = 0
    autotune_not_recorded: bool = False  # the store's goldens predate autotune records (no --force)

    @property
    def kept_but_different(self) -> list[CaseChange]:
        return [c for c in self.kept if not all_tensors_equal(c.diffs)]

    @property
    def incomplete(self) -> bool:
        """Some selected case did not pass, so its golden was not written (see not_written)."""
        return bool(self.not_written)

    def to_json(self) -> dict:
        return {
            "platform_key": self.platform_key,
            "directory": str(self.directory),
            "force": self.force,
            "added": self.added,
            "kept": [c.to_json() for c in self.kept],
            "replaced": [c.to_json() for c in self.replaced],
            "inputs_changed": [c.to_json() for c in self.inputs_changed],
            "corrupt": [c.to_json() for c in self.corrupt],
            "unused": self.unused,
            "pruned": self.pruned,
            "restored": self.restored,
            "max_tensor_bytes": self.max_tensor_bytes,
            "n_tensors": self.n_tensors,
            "n_digest_only": self.n_digest_only,
            "bytes_written": self.bytes_written,
            "incomplete": self.incomplete,
            "not_written": [{"case_id": case_id, "reason": reason} for case_id, reason in self.not_written],
            "prune_refused": self.prune_refused,
            "deleted": self.deleted,
            "autotune_conflicts": self.autotune_conflicts,
            "autotune_not_recorded": self.autotune_not_recorded,
        }

    def rows(self) -> list[tuple[str, str, str]]:
        """(case_id, outcome, detail) for every case worth a line (unchanged ones are counted only)."""
        rows = [(cid, "not written", reason) for cid, reason in self.not_written]
        rows += [(cid, "added", "") for cid in self.added]
        rows += [(c.case_id, "replaced", _changed_text(c.diffs)) for c in self.replaced]
        rows += [(c.case_id, "kept, differs", _changed_text(c.diffs)) for c in self.kept_but_different]
        rows += [
            (
                c.case_id,
                "inputs changed" + (", rewritten" if c.rewritten else ", kept"),
                f"inputs digest {c.stored_inputs_digest[:12]} -> {c.new_inputs_digest[:12]}",
            )
            for c in self.inputs_changed
        ]
        rows += [(c.case_id, "corrupt" + (", rewritten" if c.rewritten else ", kept"), c.note) for c in self.corrupt]
        # A prune that ran removed every unused golden, each named; kept ones are named up to
        # UNUSED_ROWS (a run of a few cases leaves the rest of the store unused).
        shown = self.unused if self.pruned else self.unused[:UNUSED_ROWS]
        outcome = "pruned" if self.pruned else "unused"
        rows += [(cid, outcome, "in the store, not in this run") for cid in shown]
        if len(shown) < len(self.unused):
            rows.append((f"({len(self.unused) - len(shown)} more)", "unused", "in the store, not in this run"))
        cap = f"bits unchanged; payload follows the {self.max_tensor_bytes}-byte cap"
        rows += [(cid, "re-stored", cap) for cid in self.restored]
        rows += [(name, "file deleted", "") for name in self.deleted]
        return rows

    def headline(self) -> str:
        unchanged = len(self.kept) - len(self.kept_but_different)
        return (
            f"goldens {self.directory}: {len(self.added)} added, {len(self.replaced)} replaced, "
            f"{unchanged} unchanged, {len(self.kept_but_different)} kept but different, "
            f"{len(self.inputs_changed)} inputs changed, {len(self.corrupt)} corrupt, {len(self.unused)} unused"
            f"{f' ({len(self.pruned)} pruned)' if self.pruned else ''}, {len(self.not_written)} not written; "
            f"{self.bytes_written} bytes written, {len(self.deleted)} files deleted; "
            f"{self.n_digest_only} of {self.n_tensors} tensors stored as digest only (over {self.max_tensor_bytes} bytes)"
        )

    def hints(self) -> list[str]:
        hints = []
        if not self.force and (self.kept_but_different or self.inputs_changed or self.corrupt):
            hints.append("existing goldens were left alone: rerun with --force to replace them")
        if self.not_written:
            hints.append(f"{len(self.not_written)} selected cases did not pass: their goldens were not written")
        if self.prune_refused:
            hints.append(f"prune refused: {self.prune_refused}")
        elif self.unused and not self.pruned:
            hints.append("unused goldens are kept: rerun with --prune to remove them")
        if any(digest_only_differs(c.diffs) for c in self.replaced + self.kept):
            hints.append(DIGEST_ONLY_HINT)
        return hints

    def render(self) -> str:
        """Plain text for the terminal or a log."""
        lines = [self.headline()]
        lines += [f"  {outcome:<24} {cid}  {detail}".rstrip() for cid, outcome, detail in self.rows()]
        lines += [f"hint: {h}" for h in self.hints()]
        return "\n".join(lines)
