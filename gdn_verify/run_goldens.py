"""A run's view of a golden store: the platform's goldens, or why there are none, and the
bitwise comparison of one case's outputs with its golden."""

from __future__ import annotations

from pathlib import Path

import torch

from gdn_verify.cases import Case
from gdn_verify.compare import TENSORS
from gdn_verify.adapters import Adapter
from gdn_verify.results import GoldenResult, SetupError


class RunGoldens:
    """This run's view of a golden store: the platform's goldens, or why there are none.

    With `impl`, the store must have been written by the same implementation (any revision of
    it: gdn_verify/identity.py): SetupError otherwise, unless `against_impl`, which compares
    anyway and records the fact in the summary ("against_impl"). The summary's "identity"
    holds the store's and this run's identities and the revision fields that changed; its
    "autotune" what the store's autotune choices replayed here, and after `note_autotune` the
    keys this process tuned itself (gdn_verify/autotune.py)."""

    def __init__(self, root: str | None, fp: dict, required: bool = False, suite: str = "SUITE",
                 impl: Adapter | None = None, against_impl: bool = False):
        self.platform = None
        if root is None:
            self.summary = {"status": "not checked"}
            return
        from gdn_verify.goldens import GoldenError, GoldenStore
        from gdn_verify.platform import platform_key

        path = Path(root)
        if not path.is_dir():
            raise SetupError(f"--goldens {root}: no such directory")
        try:
            store = GoldenStore(path)
            self.platform = store.for_platform(fp)
            stored = store.stores()
        except (GoldenError, OSError, ValueError) as exc:
            raise SetupError(f"--goldens {root}: unreadable golden store ({exc})") from exc
        self.summary = {"root": str(path), "platform_key": platform_key(fp)}
        if self.platform is None:
            self.summary["status"] = "not comparable"
            self.summary["detail"] = store.not_comparable_message(fp)
            self.summary["stored"] = [{"platform_key": key, "fingerprint": sfp} for key, sfp in stored]
            if required:
                raise SetupError(
                    f"--require-goldens: no bitwise comparison is possible: {self.summary['detail']}\n"
                    f"Write a store for this platform with `gdn-verify golden regen --suite {suite} --goldens {root}` "
                    "(and commit it), or run without --require-goldens.")
        else:
            self.summary["status"] = "comparable"
            self.ids = self.platform.case_ids()
            if impl is not None:
                self._check_identity(impl, against_impl)
                self._replay_autotune(impl)

    def _check_identity(self, impl: Adapter, against_impl: bool) -> None:
        from gdn_verify.goldens import implementation_mismatch
        from gdn_verify.identity import implementation_identity, revision_changes

        stored, current = self.platform.identity, implementation_identity(impl)
        mismatch = implementation_mismatch(stored, current, self.platform.directory)
        if mismatch is not None and not against_impl:
            raise SetupError(f"{mismatch}. Compare with goldens of the same implementation, or pass "
                             "--against-impl to compare these anyway (the report then says so).")
        self.summary["identity"] = {"store": stored, "run": current, "changed": revision_changes(stored, current)}
        self.summary["store_variant_audit"] = self.platform.variant_audit
        if mismatch is not None:
            self.summary["against_impl"] = mismatch

    def _replay_autotune(self, impl: Adapter) -> None:
        from gdn_verify.autotune import autotuners, implementation_package, replay

        self._package = implementation_package(impl.fn)
        done = replay(autotuners(self._package), self.platform.autotune)
        self.summary["autotune"] = done.to_json()

    def note_autotune(self) -> None:
        """After the cases: record the keys this process's autotuners settled that the store does not know."""
        if "autotune" not in self.summary:
            return
        from gdn_verify.autotune import autotuners, tuned_here

        new = tuned_here(autotuners(self._package), self.platform.autotune)
        self.summary["autotune"]["tuned_here"] = sorted(f"{name} {key}" for name, keys in new.items() for key in keys)

    def compare(self, case: Case, digest: str, outputs: dict[str, torch.Tensor]) -> GoldenResult:
        if self.summary["status"] == "not checked":
            return GoldenResult("not checked")
        if self.platform is None:
            return GoldenResult("not comparable", self.summary["detail"])
        from gdn_verify.goldens import GoldenError

        try:
            found = self.platform.compare(case.id, digest, {name: outputs[name] for name in TENSORS})
        except GoldenError as exc:
            raise SetupError(str(exc)) from exc
        if found.status == "missing":
            detail = "no stored golden for this case on this platform"
        elif found.status == "inputs-changed":
            detail = (f"stored inputs digest {found.stored_inputs_digest[:12]}, now {digest[:12]}: "
                      "the golden was made from other inputs (golden regen --force)")
        else:
            detail = "; ".join(f"{name}: {d if isinstance(d, str) else d.summary()}" for name, d in found.diffs.items()
                               if isinstance(d, str) or not d.equal)
        return GoldenResult(found.status, detail, found.to_json()["diffs"])

