"""Golden tensors: one store per platform, written atomically, verified on load.

Layout (goldens are committed to git, so everything is small and diff-friendly):

    <root>/<platform_key>/manifest.json
    <root>/<platform_key>/<case_id>.<content12>.safetensors   (tensors "o", "final_state")
    <root>/<platform_key>/.lock                                (writers' lock; not data)
    <root>/<platform_key>/.pending                             (only while a write is under way)

The manifest (sorted JSON, one line per case) is the store's table of contents:

    {"format": 2, "platform_key": ..., "fingerprint": {...}, "gdn_verify": version,
     "git_commit": sha, "date": iso,                  # of the latest write
     "max_tensor_bytes": int,                         # the store's size cap (below)
     "implementation": {"spec", "conventions", "module", "distribution", "version",
                        "git_commit", "git_dirty", "source_digest", "source_files"},
     "variant_audit": VariantAudit.to_json() | absent,  # of the latest writer's run
     "autotune": {kernel: {key: config}} | absent,    # autotuners' choices (gdn_verify/autotune.py)
     "cases": {case_id: {"case": case.to_dict(), "inputs_digest": str,
                         "file": name | null, "file_sha256": str | null,
                         "tensors": {name: {"sha256", "dtype", "shape", "stored": "file" | "digest",
                                            "summary": {...}    # digest-only tensors
                                            }},
                         "written": iso, "gdn_verify": version, "git_commit": sha,
                         "implementation": {"distribution", "version", "git_commit", "git_dirty",
                                            "source_digest"}}}}     # the revision that wrote it

Implementation identity (gdn_verify/identity.py): a store holds the goldens of one
implementation, named by its `--impl` spec and call conventions; `regenerate` refuses to add
another's, and a comparison with another's needs an explicit request (`--against-impl`). The
revision fields say which version of it wrote the store; two revisions compare bit for bit.
A manifest without "implementation" (stores written before identities were recorded, such as
the committed ones) is taken as written by our chunk kernel "gdn" at the gdn-verify version
and commit it records; "variant_audit" is absent there.

Size cap: a tensor of more than `max_tensor_bytes` bytes is stored as its digest only (sha256,
dtype, shape and the summary numbers of `tensor_summary`), with no payload; the case's file
holds the tensors under the cap (no file when there are none). A digest-only golden still
detects every bit change (the sha256 of the new output's bytes differs) but cannot say which
elements moved or by how many ULPs: the summary numbers' changes are all a report can give
(DIGEST_ONLY_HINT says how to get ULP statistics). The cap is per store, chosen when the store
is created (`default_max_tensor_bytes`, or the caller's) and kept by later writers unless
they pass another; a writer re-stores the entries whose bits it reproduces so that every such
entry follows the store's cap.

Why file names carry a content hash: a tensor file is never modified in place. A writer
records the names of the files it is about to write in `.pending`, writes them (each through
`.tmp-<name>`), replaces the manifest (one os.replace), removes the files the old manifest
named and the new one does not, then removes `.pending`. A crash at any point leaves the old
manifest with every file it names intact (plus, at worst, orphan files that the next writer
removes because `.pending` names them), so the store always loads the state of the last
completed write.

The store reads and deletes only its own files: a golden file's name is one path component
ending in ".safetensors" (no directories, no absolute paths, no hidden names), it is opened
without following symlinks and must be a regular file, and `.lock` must not be a symlink. A
writer deletes only files that the manifest it replaces or its `.pending` record names, and
the temp files of those names; any other file in the directory (a user's backup) stays.

Writers hold an exclusive fcntl.flock on `.lock`; readers take no lock (the manifest is
replaced atomically and the files it names are immutable), so a run that reads for hours
never blocks a writer. A reader opened before a regeneration that replaced a case finds that
case's old file gone: it rereads the manifest and says that the store changed while it read
it, or that a writer holds the lock now, rather than only "missing".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors  # noqa: F401 - re-exported
from safetensors.torch import save as save_safetensors

from gdn_verify.autotune import AUTOTUNE_KEY, merged
from gdn_verify.autotune import conflicts as autotune_conflicts
from gdn_verify.bitwise import BitDiff  # noqa: F401 - re-exported
from gdn_verify.files import fsync_dir
from gdn_verify.golden_diff import (  # noqa: F401 - re-exported: callers import these from here
    SUMMARY_COUNTS,
    SUMMARY_VALUES,
    DIGEST_ONLY_HINT,
    CaseChange,
    DigestDiff,
    GoldenComparison,
    RegenReport,
    TensorDiff,
    all_tensors_equal,
    digest_only_differs,
    diff_tensors,
    digest_diff,
)
from gdn_verify.golden_files import (  # noqa: F401 - re-exported: callers import these from here
    ENTRY_KEYS,
    RESTORE_HINT,
    TENSOR_KEYS,
    TMP_PREFIX,
    DEFAULT_MAX_TENSOR_BYTES,
    FORMAT,
    GOLDEN_SUFFIX,
    LOCK_FILE,
    MANIFEST,
    PENDING_FILE,
    STORED_DIGEST,
    STORED_FILE,
    GoldenError,
    write_store_file,
    delete_own,
    tensor_dtype_name,
    file_name_problem,
    json_kind,
    manifest_bytes,
    utc_now,
    read_manifest,
    read_problem,
    read_regular_file,
    writer_holds_lock,
    byte_size,
    default_max_tensor_bytes,
    store_lock,
    tensor_sha256,
    tensor_summary,
)
from gdn_verify.golden_read import (  # noqa: F401 - re-exported: callers import these from here
    GoldenStore,
    PlatformGoldens,
    entry_problem,
    present_tensors,
    stored_in_file,
    tensor_meta_problem,
    implementation_mismatch,
    store_identity,
)
from gdn_verify.identity import revision
from gdn_verify.platform import platform_key


# --- writing -----------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes of tensors with their metadata in sorted key order, whatever order the
    dict or the safetensors library keeps: a file's name carries its content digest, so the
    same tensors and metadata must always give the same bytes. The header is written back in
    safetensors' own form (compact JSON, padded with spaces to 8 bytes), so that the bytes
    equal the library's whenever it kept the sorted order."""
    data = save_safetensors(tensors, metadata=dict(sorted(metadata.items())))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def case_file_bytes(case_id: str, inputs_digest: str, tensors: dict[str, torch.Tensor]) -> bytes:
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    return safetensors_bytes(cpu, {"case_id": case_id, "inputs_digest": inputs_digest})


def _storage(t: torch.Tensor, max_tensor_bytes: int) -> str:
    return STORED_FILE if t.numel() * t.element_size() <= max_tensor_bytes else STORED_DIGEST


def _tensor_meta(t: torch.Tensor, stored: str) -> dict:
    meta = {"sha256": tensor_sha256(t), "dtype": tensor_dtype_name(t), "shape": list(t.shape), "stored": stored}
    if stored == STORED_DIGEST:
        meta["summary"] = tensor_summary(t)
    return meta


def _new_entry(case, inputs_digest: str, tensors: dict[str, torch.Tensor], max_tensor_bytes: int,
               provenance: dict) -> tuple[dict, bytes | None]:
    """(manifest entry, file content or None when every tensor is over the cap)."""
    storage = {name: _storage(t, max_tensor_bytes) for name, t in tensors.items()}
    in_file = {name: t for name, t in tensors.items() if storage[name] == STORED_FILE}
    data = case_file_bytes(case.id, inputs_digest, in_file) if in_file else None
    file_sha = None if data is None else hashlib.sha256(data).hexdigest()
    entry = {
        "case": case.to_dict(),
        "inputs_digest": inputs_digest,
        "file": None if data is None else f"{case.id}.{file_sha[:12]}{GOLDEN_SUFFIX}",
        "file_sha256": file_sha,
        "tensors": {name: _tensor_meta(t, storage[name]) for name, t in sorted(tensors.items())},
        **provenance,
    }
    return entry, data


def _follows_cap(entry: dict, tensors: dict[str, torch.Tensor], max_tensor_bytes: int) -> bool:
    return all(entry["tensors"][name]["stored"] == _storage(t, max_tensor_bytes) for name, t in tensors.items())


def _manifest_files(manifest: dict | None) -> set[str]:
    """The golden file names a manifest's entries name (malformed entries and names that are
    not golden file names contribute none: they are never deleted)."""
    if manifest is None:
        return set()
    return {entry["file"] for entry in manifest["cases"].values()
            if isinstance(entry, dict) and file_name_problem(entry.get("file")) is None}


def _read_pending(directory: Path) -> list[str]:
    """The file names an interrupted writer recorded in .pending ([] when there is none)."""
    path = directory / PENDING_FILE
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise GoldenError(f"{path}: the store's record of a write under way {read_problem(err)}; "
                          "remove it if no writer runs") from err
    try:
        names = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        names = None
    if not isinstance(names, list) or any(file_name_problem(name) is not None for name in names):
        raise GoldenError(f"{path}: the store's record of a write under way is not a list of golden file "
                          "names; remove it if no writer runs")
    return names


def _clean_interrupted_write(directory: Path, manifest: dict | None, deleted: list[str]) -> None:
    """Delete what an interrupted writer left (called under the lock): the files its .pending
    names that the manifest does not, the temp files of those and of the manifest and record,
    then the record itself."""
    pending = _read_pending(directory)
    named = _manifest_files(manifest)
    for name in pending:
        if name not in named:
            delete_own(directory / name, deleted)
    for name in [*pending, MANIFEST, PENDING_FILE]:
        delete_own(directory / (TMP_PREFIX + name), deleted)
    delete_own(directory / PENDING_FILE, None)


def _prune_refusal(whole_suite: bool, not_written: list[tuple[str, str]], n_passed: int) -> str | None:
    """Why prune must not run after this regeneration (None when it may): pruning removes the
    goldens of every case the run did not write, which is right only when the run was the
    whole suite and every case of it passed."""
    if not whole_suite:
        return ("--prune applies only to a run of the whole suite; this run selected a subset, so the "
                "goldens of the cases it did not select stay")
    if not_written:
        return (f"--prune applies only when every selected case passed; {len(not_written)} did not pass, "
                "so no golden is removed")
    if not n_passed:
        return "--prune applies only to a run that produced goldens; this one produced none"
    return None


def _identity_keys(old: dict | None, identity: dict | None, variant_audit: dict | None) -> dict:
    """The manifest's "implementation" and "variant_audit": this writer's, or the old manifest's."""
    out = {}
    for name, value in (("implementation", identity), ("variant_audit", variant_audit)):
        if value is not None:
            out[name] = value
        elif old is not None and name in old:
            out[name] = old[name]
    return out


def _choice_count(record: dict) -> int:
    """Autotune choices in a record ({kernel: {key: config}})."""
    return sum(map(len, record.values()))


def regenerate(
    root: str | os.PathLike,
    fp: dict,
    results: Iterable[tuple[object, str, dict[str, torch.Tensor | None]]],
    force: bool = False,
    prune: bool = False,
    lock_timeout_s: float = 600.0,
    max_tensor_bytes: int | None = None,
    whole_suite: bool = False,
    not_passed: Iterable[tuple[str, str]] = (),
    skipped: Iterable[str] = (),
    identity: dict | None = None,
    variant_audit: dict | None = None,
    other_implementation: bool = False,
    autotune: dict | None = None,
) -> RegenReport:
    """Write the goldens of one run (items: (case, inputs_digest, {"o": ..., "final_state": ...}),
    the cases that passed).

    Default: only case ids not yet in the store are written. force: also rewrite stored
    goldens whose bits differ, whose inputs digest changed, or that fail verification.
    not_passed: (case id, reason) of the other selected cases (failed, errored, not run);
    their stored goldens stay and the report is `incomplete`. skipped: selected case ids that
    the implementation does not support (nothing to write, not a failure); their stored
    goldens stay and never count as unused. prune: remove stored case ids that this run did
    not select, only when whole_suite (the run selected every case of its suite) and every
    selected case passed; otherwise the report says why it did not (`prune_refused`). max_tensor_bytes: the store's size cap from now on (None: the cap the
    store records, or for a new store `default_max_tensor_bytes(fp)`); tensors over it are
    stored as their digest only. Deletes only files the replaced manifest named (and what an
    interrupted writer recorded in .pending), each listed in the report. See RegenReport.
    identity: the implementation's (gdn_verify.identity.implementation_identity), recorded in the
    manifest and, as its revision, in every entry written; GoldenError when the store was written
    by another implementation (`implementation_mismatch`), unless other_implementation, which
    writes anyway and records this one as the store's writer. None: the store's recorded
    identity stays. variant_audit: the run's compiled-variant audit (VariantAudit.to_json()), recorded
    with the identity. autotune: the run's autotune choices (gdn_verify.autotune.choices), added to
    those the store records; not recorded (report.autotune_not_recorded) into a store whose goldens
    predate the record, unless force.
    """
    if max_tensor_bytes is not None and (not isinstance(max_tensor_bytes, int) or max_tensor_bytes < 0):
        raise ValueError(f"max_tensor_bytes: expected None or an integer >= 0, got {max_tensor_bytes!r}")
    not_written = [(str(case_id), str(reason)) for case_id, reason in not_passed]
    key = platform_key(fp)
    directory = Path(root) / key
    with store_lock(directory, lock_timeout_s):
        old = read_manifest(directory)
        if identity is not None and old is not None and not other_implementation:
            problem = implementation_mismatch(store_identity(old), identity, directory)
            if problem is not None:
                raise GoldenError(f"{problem}; write its goldens to a store of their own (another --goldens DIR)")
        if max_tensor_bytes is None:
            max_tensor_bytes = default_max_tensor_bytes(fp) if old is None else old["max_tensor_bytes"]
        report = RegenReport(platform_key=key, directory=directory, force=force, max_tensor_bytes=max_tensor_bytes,
                             not_written=not_written)
        # A store whose goldens predate autotune records may hold goldens made with other choices
        # than this writer's: its record starts only when every golden may follow it (--force).
        if autotune and old is not None and old["cases"] and AUTOTUNE_KEY not in old and not force:
            report.autotune_not_recorded, autotune = True, None
        # The manifest's "autotune": the old record's choices plus the keys this writer adds.
        old_record = (old or {}).get(AUTOTUNE_KEY) or {}
        record = merged(old_record, autotune or {})
        report.autotune_conflicts = autotune_conflicts(old_record, autotune or {})
        report.autotune_recorded = _choice_count(record)
        report.autotune_added = report.autotune_recorded - _choice_count(old_record)
        _clean_interrupted_write(directory, old, report.deleted)
        store = PlatformGoldens(directory, old) if old is not None else None
        cases: dict[str, dict] = dict(old["cases"]) if old is not None else {}
        now = utc_now()
        provenance = {"written": now, "gdn_verify": fp.get("gdn_verify"), "git_commit": fp.get("git_commit")}
        if identity is not None:
            provenance["implementation"] = revision(identity)
        seen: set[str] = set()
        pending: list[tuple[Path, bytes]] = []
        rewritten: set[str] = set()

        def write(case, digest, tensors):
            cases[case.id], data = _new_entry(case, digest, tensors, max_tensor_bytes, provenance)
            if data is not None:
                pending.append((directory / cases[case.id]["file"], data))
            rewritten.add(case.id)

        for case, inputs_digest, raw_tensors in results:
            case_id = case.id
            if not case_id or "/" in case_id or case_id.startswith("."):
                raise ValueError(f"results: case id {case_id!r} is not usable as a file name")
            if case_id in seen:
                raise ValueError(f"results: case id {case_id!r} appears twice in one regeneration")
            seen.add(case_id)
            tensors = present_tensors(raw_tensors)
            if case_id not in cases:
                write(case, inputs_digest, tensors)
                report.added.append(case_id)
                continue
            try:
                entry, stored = store.load(case_id)
            except GoldenError as err:
                report.corrupt.append(CaseChange(case_id, rewritten=force, note=str(err)))
                if force:
                    write(case, inputs_digest, tensors)
                continue
            if entry["inputs_digest"] != inputs_digest:
                report.inputs_changed.append(
                    CaseChange(case_id, stored_inputs_digest=entry["inputs_digest"], new_inputs_digest=inputs_digest, rewritten=force)
                )
                if force:
                    write(case, inputs_digest, tensors)
                continue
            diffs = diff_tensors(tensors, entry["tensors"], stored)
            if force and not all_tensors_equal(diffs):
                write(case, inputs_digest, tensors)
                report.replaced.append(CaseChange(case_id, diffs, inputs_digest, inputs_digest, rewritten=True))
                continue
            report.kept.append(CaseChange(case_id, diffs, inputs_digest, inputs_digest))
            if all_tensors_equal(diffs) and not _follows_cap(entry, tensors, max_tensor_bytes):
                write(case, inputs_digest, tensors)
                report.restored.append(case_id)

        failed = {case_id for case_id, _ in not_written}
        if failed & seen:
            raise ValueError(f"not_passed: case ids {sorted(failed & seen)} are also among the results")
        report.unused = sorted(set(cases) - seen - failed - set(skipped))
        if prune:
            report.prune_refused = _prune_refusal(whole_suite, not_written, len(seen))
        if prune and report.prune_refused is None:
            for case_id in report.unused:
                del cases[case_id]
            report.pruned = list(report.unused)
        stored_as = [meta["stored"] for entry in cases.values() for meta in entry["tensors"].values()]
        report.n_tensors, report.n_digest_only = len(stored_as), stored_as.count(STORED_DIGEST)

        if (old is not None and not rewritten and not report.pruned and max_tensor_bytes == old["max_tensor_bytes"]
                and not report.autotune_added):
            # Nothing changed: the manifest (and its dates) stay as they are.
            return report
        if pending:
            # Recorded before the files exist, so that the next writer can remove them if this
            # one stops before its manifest names them.
            write_store_file(directory / PENDING_FILE, json.dumps(sorted(p.name for p, _ in pending)).encode())
            fsync_dir(directory)
        for path, data in pending:
            write_store_file(path, data)
            report.bytes_written += len(data)
        fsync_dir(directory)  # the new files' names are durable before a manifest names them
        manifest = {
            "format": FORMAT,
            "platform_key": key,
            "fingerprint": fp,
            "gdn_verify": fp.get("gdn_verify"),
            "git_commit": fp.get("git_commit"),
            "date": now,
            **_identity_keys(old, identity, variant_audit),
            **({AUTOTUNE_KEY: record} if record else {}),
            "max_tensor_bytes": max_tensor_bytes,
            "cases": cases,
        }
        # Last: until this replace, the old manifest and every file it names are untouched.
        write_store_file(directory / MANIFEST, manifest_bytes(manifest))
        fsync_dir(directory)
        named = _manifest_files(manifest)
        for name in sorted(_manifest_files(old) - named):
            delete_own(directory / name, report.deleted)
        delete_own(directory / PENDING_FILE, None)
    return report
