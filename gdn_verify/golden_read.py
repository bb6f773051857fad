"""Reading a golden store: manifest entries checked before use, each case's file verified
against the manifest, comparisons with a run's outputs, and the stores under a root. The
store's layout and safety rules are described in gdn_verify/goldens.py, which re-exports the
public names."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

from gdn_verify.golden_diff import (
    SUMMARY_COUNTS,
    SUMMARY_VALUES,
    GoldenComparison,
    all_tensors_equal,
    diff_tensors,
)
from gdn_verify.golden_files import (
    RESTORE_HINT,
    ENTRY_KEYS,
    TENSOR_KEYS,
    LOCK_FILE,
    MANIFEST,
    STORED_DIGEST,
    STORED_FILE,
    GoldenError,
    tensor_dtype_name,
    file_name_problem,
    json_kind,
    read_manifest,
    read_problem,
    read_regular_file,
    writer_holds_lock,
    tensor_sha256,
)
from gdn_verify.identity import describe_key, legacy_identity
from gdn_verify.identity import key as identity_key
from gdn_verify.platform import describe, platform_key


def present_tensors(tensors: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if t is not None}


def entry_problem(entry) -> str | None:
    """What is wrong with the structure of a manifest entry (its tensors' metadata aside), as
    the end of a sentence; None when nothing is."""
    if not isinstance(entry, dict):
        return f"is {json_kind(entry)}, expected an object"
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        return f"lacks {missing}"
    for key, kind, expected in (("case", dict, "an object"), ("inputs_digest", str, "a string"),
                                ("tensors", dict, "an object {name: metadata}")):
        if not isinstance(entry[key], kind):
            return f"has {key!r} {json_kind(entry[key])}, expected {expected}"
    if entry["file"] is not None:
        problem = file_name_problem(entry["file"])
        if problem is not None:
            return f"has 'file' {entry['file']!r}, which {problem}"
    sha = entry["file_sha256"]
    if (entry["file"] is None) != (sha is None) or not isinstance(sha, (str, type(None))):
        return f"has 'file' {entry['file']!r} with 'file_sha256' {json_kind(entry['file_sha256'])}"
    return None


def tensor_meta_problem(meta: dict) -> str | None:
    """What is wrong with the types of a tensor's metadata (its keys present), or None."""
    for key in ("sha256", "dtype"):
        if not isinstance(meta[key], str):
            return f"{key} is {json_kind(meta[key])}, expected a string"
    shape = meta["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return f"shape is {json_kind(shape)}, expected a list of integers >= 0"
    if meta["stored"] == STORED_DIGEST:
        summary = meta["summary"]
        if not isinstance(summary, dict):
            return f"summary is {json_kind(summary)}, expected an object"
        bad = [k for k in SUMMARY_COUNTS if type(summary.get(k)) is not int]
        bad += [k for k in SUMMARY_VALUES if type(summary.get(k)) not in (int, float)]
        if bad:
            return f"summary lacks numbers {bad}"
    return None


def stored_in_file(entry: dict) -> dict[str, dict]:
    """The tensor metadata of an entry's tensors that its file holds (the others are digest only)."""
    return {name: meta for name, meta in entry["tensors"].items() if meta["stored"] == STORED_FILE}



class PlatformGoldens:
    """The goldens of one platform (one directory), as its manifest stood when opened."""

    def __init__(self, directory: Path, manifest: dict):
        self.directory = directory
        self.manifest = manifest

    @property
    def platform_key(self) -> str:
        return self.manifest["platform_key"]

    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    @property
    def max_tensor_bytes(self) -> int:
        return self.manifest["max_tensor_bytes"]

    @property
    def identity(self) -> dict:
        """The implementation that wrote the store (see `store_identity`)."""
        return store_identity(self.manifest)

    @property
    def variant_audit(self) -> dict | None:
        """The compiled-variant audit of the latest writer's run (VariantAudit.to_json()), if recorded."""
        audit = self.manifest.get("variant_audit")
        return audit if isinstance(audit, dict) else None

    @property
    def autotune(self) -> dict:
        """The autotune choices the store's writers made (gdn_verify/autotune.py), if recorded."""
        recorded = self.manifest.get("autotune")
        return recorded if isinstance(recorded, dict) else {}

    def case_revision(self, case_id: str) -> dict | None:
        """The implementation revision that wrote case_id's golden, if recorded."""
        entry = self.manifest["cases"].get(case_id)
        recorded = entry.get("implementation") if isinstance(entry, dict) else None
        return recorded if isinstance(recorded, dict) else None

    def case_ids(self) -> set[str]:
        return set(self.manifest["cases"])

    def missing(self, case_ids: Iterable[str]) -> list[str]:
        """The given case ids that the store has no entry for, in the given order: a run that
        selected them has nothing to compare them with ("missing", never "equal")."""
        return [case_id for case_id in case_ids if case_id not in self.manifest["cases"]]

    def entry(self, case_id: str) -> dict:
        """The manifest entry of case_id, its structure checked; GoldenError (naming the
        manifest, the case and what is wrong) if there is none or it is malformed."""
        manifest_path = self.directory / MANIFEST
        try:
            entry = self.manifest["cases"][case_id]
        except KeyError:
            raise GoldenError(f"{manifest_path}: no golden for case {case_id!r}") from None
        problem = entry_problem(entry)
        if problem is not None:
            raise GoldenError(f"{manifest_path}: entry of case {case_id!r} {problem}; {RESTORE_HINT}")
        for name, meta in entry["tensors"].items():
            where = f"{manifest_path}: tensor {name!r} of case {case_id!r}"
            if not isinstance(meta, dict):
                raise GoldenError(f"{where} is {json_kind(meta)}, expected an object; {RESTORE_HINT}")
            if meta.get("stored") not in TENSOR_KEYS:
                raise GoldenError(f"{where} has stored={meta.get('stored')!r}, expected one of {sorted(TENSOR_KEYS)}")
            lacks = [k for k in TENSOR_KEYS[meta["stored"]] if k not in meta]
            if lacks:
                raise GoldenError(f"{where} lacks {lacks}; {RESTORE_HINT}")
            problem = tensor_meta_problem(meta)
            if problem is not None:
                raise GoldenError(f"{where}: {problem}; {RESTORE_HINT}")
        in_file = stored_in_file(entry)
        if bool(in_file) != (entry["file"] is not None):
            raise GoldenError(
                f"{manifest_path}: entry of case {case_id!r} names file {entry['file']!r} but stores "
                f"{sorted(in_file) or 'no tensor'} in a file; {RESTORE_HINT}"
            )
        return entry

    def load(self, case_id: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """(manifest entry, the tensors stored in full), each verified against the manifest.
        A digest-only tensor has its metadata in the entry and no payload to load. GoldenError
        naming the file when it is missing, unreadable, a symlink or corrupt."""
        entry = self.entry(case_id)
        if entry["file"] is None:
            return entry, {}
        path = self.directory / entry["file"]  # one path component: checked by entry()
        try:
            data = read_regular_file(path)
        except FileNotFoundError:
            raise self._missing_file(path, case_id) from None
        except OSError as err:
            raise GoldenError(f"{path}: golden file of case {case_id!r} {read_problem(err)}") from err
        if hashlib.sha256(data).hexdigest() != entry["file_sha256"]:
            raise GoldenError(f"{path}: golden file of case {case_id!r} is corrupt (file sha256 differs from the manifest)")
        try:
            tensors = load_safetensors(data)
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise GoldenError(f"{path}: golden file of case {case_id!r} does not parse as safetensors: {err}") from err
        expected = stored_in_file(entry)
        if set(tensors) != set(expected):
            raise GoldenError(
                f"{path}: golden file of case {case_id!r} holds tensors {sorted(tensors)}, manifest lists {sorted(expected)}"
            )
        for name, meta in expected.items():
            t = tensors[name]
            if tensor_dtype_name(t) != meta["dtype"] or list(t.shape) != list(meta["shape"]):
                raise GoldenError(
                    f"{path}: tensor {name!r} is {tensor_dtype_name(t)}{list(t.shape)}, manifest says {meta['dtype']}{meta['shape']}"
                )
            if tensor_sha256(t) != meta["sha256"]:
                raise GoldenError(f"{path}: tensor {name!r} of case {case_id!r} is corrupt (sha256 differs from the manifest)")
        return entry, tensors

    def _missing_file(self, path: Path, case_id: str) -> GoldenError:
        """The error for a file that the manifest, as opened, names and that is not there. Files
        are immutable and removed only after a writer replaced the manifest, so a changed
        manifest on disk means a concurrent writer, not damage."""
        try:
            now = read_manifest(self.directory)
        except GoldenError:
            now = None
        if now != self.manifest:
            return GoldenError(
                f"{path}: golden file of case {case_id!r} is gone: the store changed while this run read it "
                f"(a concurrent writer such as `gdn-verify golden regen` replaced {self.directory / MANIFEST} "
                "and removed the file); rerun to compare with the store as it is now"
            )
        if writer_holds_lock(self.directory):
            return GoldenError(
                f"{path}: golden file of case {case_id!r} is missing while a writer holds the store lock "
                f"{self.directory / LOCK_FILE} (a concurrent `gdn-verify golden regen`); rerun once it is done"
            )
        return GoldenError(f"{path}: golden file of case {case_id!r} is missing")

    def compare(self, case_id: str, inputs_digest: str, tensors: dict[str, torch.Tensor | None]) -> GoldenComparison:
        """Compare a run's outputs with the golden of the same case (see GoldenComparison)."""
        if case_id not in self.manifest["cases"]:
            return GoldenComparison(case_id, "missing")
        entry, stored = self.load(case_id)
        if entry["inputs_digest"] != inputs_digest:
            return GoldenComparison(case_id, "inputs-changed", stored_inputs_digest=entry["inputs_digest"])
        diffs = diff_tensors(present_tensors(tensors), entry["tensors"], stored)
        return GoldenComparison(case_id, "equal" if all_tensors_equal(diffs) else "different", diffs, entry["inputs_digest"])


class GoldenStore:
    """All golden stores under one root directory, one per platform key."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def stores(self) -> list[tuple[str, dict]]:
        """(platform_key, fingerprint) of every store under root, sorted by key."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            manifest = read_manifest(directory)
            if manifest is not None:
                found.append((manifest["platform_key"], manifest["fingerprint"]))
        return found

    def for_platform(self, fp: dict) -> PlatformGoldens | None:
        """The store whose bits are comparable with a run of fingerprint fp; None if there is none."""
        directory = self.root / platform_key(fp)
        manifest = read_manifest(directory)
        return None if manifest is None else PlatformGoldens(directory, manifest)

    def not_comparable_message(self, fp: dict) -> str:
        """Why a run of fingerprint fp has nothing to compare with, listing the stores present."""
        lines = [f"goldens not comparable: no store for platform {platform_key(fp)} under {self.root}",
                 f"  this run: {describe(fp)}"]
        stores = self.stores()
        lines += [f"  store {key}: {describe(store_fp)}" for key, store_fp in stores] or ["  (no stores present)"]
        return "\n".join(lines)


def store_identity(manifest: dict) -> dict:
    """The identity of the implementation that wrote a store: the one its manifest records, or
    for a manifest that records none, our chunk kernel (gdn_verify.identity.legacy_identity)."""
    recorded = manifest.get("implementation")
    return dict(recorded) if isinstance(recorded, dict) and recorded.get("spec") else legacy_identity(manifest)


def implementation_mismatch(stored: dict, current: dict, directory: Path) -> str | None:
    """Why a store written by `stored` must not be compared with or extended by `current`
    (None when both are the same implementation, at any revision)."""
    if identity_key(stored) == identity_key(current):
        return None
    return (f"golden store {directory} was written by implementation {describe_key(stored)}, not by "
            f"{describe_key(current)}: the goldens of one implementation are never mixed with another's")


