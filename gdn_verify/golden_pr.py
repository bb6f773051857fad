"""The before/after proof of `gdn-verify golden diff`: a run's outputs against the goldens that
an earlier revision of the same implementation wrote, as a terminal table and as Markdown for a
pull request.

It says, in this order: the headline ("N/N cases bitwise equal", or how many differ); which
revisions are compared (the store's and this run's identities: package version, git commit,
source digest, and what changed between them); the compiled-variant counts per kernel before
(the store's recorded audit) and after (this run's audit); then a table per differing case
(tensor, elements differing, max ULP, ULP histogram, first differing index), and the cases not
compared (no golden, other inputs, errors). A comparison with another implementation's
goldens, which needs `--against-impl`, is said so at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gdn_verify.identity import describe_key, describe_revision
from gdn_verify.render import md_table

EQUAL, DIFFERENT = "equal", "different"
NOT_COMPARED = ("missing", "inputs-changed", "error", "not supported")


def tensor_rows(diffs: dict) -> list[list[str]]:
    """[tensor, elements differing, max ULP, histogram, first index] per tensor that differs
    (BitDiff / DigestDiff JSON, or a sentence when the tensor cannot be compared)."""
    rows = []
    for name, d in diffs.items():
        if isinstance(d, str):
            rows.append([name, d, "-", "-", "-"])
        elif d.get("digest_only"):
            if not d["equal"]:
                rows.append([name, f"different ({d['n_elements']} elements, golden stored as digest only)", "-",
                             "no ULP statistics", d.get("detail") or "-"])
        elif not d.get("equal", True):
            ulp = "NaN mismatch" if d.get("max_ulp_unbounded") else str(d["max_ulp"])
            hist = ", ".join(f"{k} ULP: {v}" if k != "nan" else f"NaN: {v}" for k, v in d["histogram"].items() if v)
            first = str(tuple(d["first_index"])) if d.get("first_index") is not None else "-"
            rows.append([name, f"{d['n_different']} of {d['n_elements']}", ulp, hist, first])
    return rows


def _total_variants(audit: dict | None) -> int | None:
    if not audit or not audit.get("ran", True) or not audit.get("after_sweep"):
        return None
    return sum(audit["after_sweep"].values())


@dataclass
class StoreDiff:
    """One `golden diff` run, reduced to what the proof needs (built by `from_run`)."""

    impl: str
    suite: str
    platform_key: str
    store: str
    before: dict  # the store's implementation identity
    after: dict  # this run's
    changed: list[str]  # revision fields that differ, "field: before -> after"
    against_impl: str | None  # why the two are different implementations, when compared anyway
    cases: list[tuple[str, str, dict | str]]  # (case id, equal | different | not-compared status, diffs or why)
    variants_before: dict | None  # VariantAudit JSON recorded in the store
    variants_after: dict | None  # this run's
    interrupted: bool = False
    digest_hints: list[str] = field(default_factory=list)
    autotune: dict | None = None  # RunGoldens' summary: choices replayed from the store, keys tuned here

    @classmethod
    def from_run(cls, result, store_dir: str) -> "StoreDiff":
        identity = result.goldens.get("identity") or {}
        cases = []
        for r in result.cases:
            if r.status == "not supported":
                cases.append((r.id, "not supported", "; ".join(r.not_supported)))
            elif r.status == "error":
                cases.append((r.id, "error", "; ".join(r.failures)))
            elif r.golden.status in (EQUAL, DIFFERENT):
                cases.append((r.id, r.golden.status, r.golden.diffs))
            else:
                cases.append((r.id, r.golden.status, r.golden.detail))
        hints = sorted({d["hint"] for r in result.cases for d in r.golden.diffs.values()
                        if isinstance(d, dict) and d.get("hint")})
        audit = result.variant_audit.to_json() if result.variant_audit is not None else None
        return cls(impl=result.impl, suite=result.suite, platform_key=result.goldens.get("platform_key", "?"),
                   store=store_dir, before=identity.get("store") or {}, after=identity.get("run") or {},
                   changed=identity.get("changed") or [], against_impl=result.goldens.get("against_impl"),
                   cases=cases, variants_before=result.goldens.get("store_variant_audit"), variants_after=audit,
                   interrupted=result.interrupted, digest_hints=hints, autotune=result.goldens.get("autotune"))

    # --- counts and verdict ----------------------------------------------------------------

    def count(self, status: str) -> int:
        return sum(s == status for _, s, _ in self.cases)

    @property
    def compared(self) -> int:
        return self.count(EQUAL) + self.count(DIFFERENT)

    @property
    def all_equal(self) -> bool:
        return (not self.interrupted and self.compared > 0 and self.count(DIFFERENT) == 0
                and not any(s in ("error", "inputs-changed", "missing") for _, s, _ in self.cases))

    def headline(self) -> str:
        n, equal, different = len(self.cases), self.count(EQUAL), self.count(DIFFERENT)
        if different:
            text = f"{different} of {self.compared} compared cases differ bit for bit ({equal} bitwise equal)"
        else:
            text = f"{equal}/{self.compared} cases bitwise equal"
        others = [f"{self.count(s)} {s}" for s in NOT_COMPARED if self.count(s)]
        if others or self.compared != n:
            text += f"; of {n} selected: " + ", ".join(others or ["none other"])
        if self.interrupted:
            text += "; interrupted before the last case"
        return text

    # --- pieces ----------------------------------------------------------------------------

    def revision_rows(self) -> list[list[str]]:
        rows = [["implementation", describe_key(self.before), describe_key(self.after)],
                ["revision", describe_revision(self.before), describe_revision(self.after)]]
        for name in ("distribution", "version", "git_commit", "source_digest"):
            a, b = self.before.get(name), self.after.get(name)
            if a is not None or b is not None:
                rows.append([name, "-" if a is None else str(a), "-" if b is None else str(b)])
        return rows

    def variants_line(self) -> str:
        before, after = _total_variants(self.variants_before), _total_variants(self.variants_after)
        if before is None and after is None:
            return "compiled variants: not counted on either side (no variant counter for this implementation here)"
        word = lambda n, a: "not recorded" if n is None else f"{n} over {len(a['after_sweep'])} kernels"  # noqa: E731
        line = (f"compiled variants (variant audit, after the T sweep): {word(before, self.variants_before)} -> "
                f"{word(after, self.variants_after)}")
        if before is not None and after is not None and \
                bool(self.variants_before.get("settled")) != bool(self.variants_after.get("settled")):
            line += (" (not comparable: one audit settled autotuning before counting, the other also counted "
                     "the configs an autotuner compiled to time them)")
        return line

    def autotune_line(self) -> str | None:
        from gdn_verify.autotune import describe

        return describe(self.autotune)

    def variant_rows(self) -> list[list[str]]:
        before = (self.variants_before or {}).get("after_sweep") or {}
        after = (self.variants_after or {}).get("after_sweep") or {}
        rows = []
        for name in sorted(set(before) | set(after)):
            a, b = before.get(name), after.get(name)
            delta = "" if a is None or b is None or a == b else f"{b - a:+d}"
            rows.append([name, "-" if a is None else str(a), "-" if b is None else str(b), delta])
        return rows

    # --- outputs ---------------------------------------------------------------------------

    def markdown(self) -> str:
        out = [f"## Golden diff: `{self.impl}`, suite `{self.suite}`, {self.platform_key}", "",
               f"**{self.headline()}**", ""]
        if self.against_impl:
            out += [f"> **Compared with another implementation's goldens (`--against-impl`):** {self.against_impl}.",
                    ""]
        out += [f"Goldens: `{self.store}`. "
                + ("Revision changes: " + "; ".join(f"`{c}`" for c in self.changed) + "."
                   if self.changed else "No revision change recorded between the goldens and this run."), ""]
        out += md_table(["", "goldens (before)", "this run (after)"], self.revision_rows()) + [""]
        out += [f"{self.variants_line()[0].upper()}{self.variants_line()[1:]}.", ""]
        rows = self.variant_rows()
        if rows:
            out += md_table(["kernel", "before", "after", "change"], rows) + [""]
        if self.variants_after and self.variants_after.get("detail"):
            out += [f"Variant audit now: {self.variants_after['detail']}.", ""]
        if self.autotune_line():
            out += [f"{self.autotune_line()[0].upper()}{self.autotune_line()[1:]}.", ""]
        different = [(cid, d) for cid, s, d in self.cases if s == DIFFERENT]
        if different:
            out += [f"### Cases that differ ({len(different)})", ""]
            for cid, diffs in different:
                out += [f"`{cid}`", ""]
                out += md_table(["tensor", "elements differing", "max ULP", "ULP histogram", "first index"],
                              tensor_rows(diffs)) + [""]
        elif self.compared:
            out += [f"Every compared case is bitwise equal: {self.count(EQUAL)} cases, o and final_state.", ""]
        others = [(cid, s, d) for cid, s, d in self.cases if s not in (EQUAL, DIFFERENT)]
        if others:
            out += ["### Cases not compared", ""]
            out += md_table(["case", "status", "why"], [[cid, s, d] for cid, s, d in others]) + [""]
        for hint in self.digest_hints:
            out += [f"Digest-only goldens: {hint}.", ""]
        return "\n".join(out)

    def render(self) -> str:
        """Plain text for the terminal."""
        lines = [f"golden diff: {self.impl} vs {self.store} ({self.platform_key}): {self.headline()}"]
        if self.against_impl:
            lines.append(f"  compared with another implementation's goldens (--against-impl): {self.against_impl}")
        lines.append(f"  goldens:  {describe_revision(self.before)}")
        lines.append(f"  this run: {describe_revision(self.after)}")
        lines += [f"  changed:  {c}" for c in self.changed]
        lines.append(f"  {self.variants_line()}")
        lines += [f"    {name}: {a} -> {b}" for name, a, b, delta in self.variant_rows() if delta]
        if self.autotune_line():
            lines.append(f"  {self.autotune_line()}")
        for cid, status, d in self.cases:
            if status == DIFFERENT:
                for tensor, n, ulp, hist, first in tensor_rows(d):
                    lines.append(f"  DIFFERENT {cid} {tensor}: {n} differ, max ULP {ulp}, [{hist}], first at {first}")
            elif status != EQUAL:
                lines.append(f"  {status.upper()} {cid}: {d}")
        lines += [f"hint: {h}" for h in self.digest_hints]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"impl": self.impl, "suite": self.suite, "platform_key": self.platform_key, "store": self.store,
                "headline": self.headline(), "all_equal": self.all_equal, "before": self.before, "after": self.after,
                "changed": self.changed, "against_impl": self.against_impl,
                "variants_before": self.variants_before, "variants_after": self.variants_after,
                "autotune": self.autotune,
                "cases": [{"case_id": cid, "status": s, "detail": d} for cid, s, d in self.cases]}
