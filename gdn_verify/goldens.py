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
     "cases": {case_id: {"case": case.to_dict(), "inputs_digest": str,
                         "file": name | null, "file_sha256": str | null,
                         "tensors": {name: {"sha256", "dtype", "shape", "stored": "file" | "digest",
                                            "summary": {...}    # digest-only tensors
                                            }},
                         "written": iso, "gdn_verify": version, "git_commit": sha}}}

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

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gdn_verify.bitwise import BitDiff, bit_diff
from gdn_verify.platform import CUDA_BACKEND, INTERPRETER_BACKEND, describe, platform_key

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
PENDING_FILE = ".pending"  # JSON list of the file names a writer is about to write
GOLDEN_SUFFIX = ".safetensors"
FORMAT = 2
STORED_FILE, STORED_DIGEST = "file", "digest"
_KIB = 1024
# Per-tensor cap of a new store, by backend. Measured from the suites' case lists (output
# shapes x dtype sizes): every tensor of the cpu suite fits in 512 KiB (the largest, a float64
# final state, is 352 KiB; 3.9 MB in all), so the interpreter store keeps full tensors and ULP
# statistics for every case. The gpu suite's tensors total 1.9 GB (up to 64 MiB each); with
# 64 KiB, 126 of its 1064 tensors stay full (3.0 MB), with 256 KiB it would be 329 (37 MB).
DEFAULT_MAX_TENSOR_BYTES = {INTERPRETER_BACKEND: 512 * _KIB, CUDA_BACKEND: 64 * _KIB}
DIGEST_ONLY_HINT = (
    "a digest-only golden gives no ULP statistics; to get them, regenerate full goldens into a "
    "scratch directory on the commit that wrote these ones (`gdn-verify golden regen --suite S "
    "--goldens SCRATCH --max-golden-bytes 4G`), then run `gdn-verify golden diff --suite S "
    "--goldens SCRATCH` on this one"
)
_TMP_PREFIX = ".tmp-"
_ENTRY_KEYS = ("case", "inputs_digest", "file", "file_sha256", "tensors")
_TENSOR_KEYS = {STORED_FILE: ("sha256", "dtype", "shape"), STORED_DIGEST: ("sha256", "dtype", "shape", "summary")}


class GoldenError(RuntimeError):
    """A golden store is missing, corrupt or locked; the message names the file and what is wrong."""


# --- low-level helpers -------------------------------------------------------------------------


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's element bytes (row-major, native little-endian layout)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()  # hashes the buffer, no copy


def tensor_summary(t: torch.Tensor) -> dict:
    """Numbers that show a reviewer how a digest-only tensor moved: the counts of NaN and
    infinite elements, and the float64 sum, L2 norm and largest magnitude of the finite ones.
    NumPy's pairwise sums (not BLAS, whose bits depend on the thread count) keep them
    reproducible on one machine."""
    x = t.detach().cpu().to(torch.float64).numpy().reshape(-1)
    is_finite = np.isfinite(x)
    finite = x if is_finite.all() else x[is_finite]  # the common case costs no copy or count
    return {
        "n_nan": 0 if finite is x else int(np.isnan(x).sum()),
        "n_posinf": 0 if finite is x else int(np.isposinf(x).sum()),
        "n_neginf": 0 if finite is x else int(np.isneginf(x).sum()),
        "finite_sum": float(finite.sum()),
        "finite_l2": float(np.sqrt(np.square(finite).sum())),
        "finite_max_abs": abs(float(max(finite.max(), -finite.min()))) if finite.size else 0.0,
    }


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def default_max_tensor_bytes(fp: dict) -> int:
    """The size cap of a new store for fingerprint fp (see DEFAULT_MAX_TENSOR_BYTES)."""
    return DEFAULT_MAX_TENSOR_BYTES[fp["backend"]]


_BYTE_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A byte count from text: a plain integer or one with a binary suffix (64K, 1M, 2GiB)."""
    match = _BYTE_SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a byte count such as 0, 65536, 64K, 1M or 2G, got {text!r}")
    return int(match[1]) * _KIB ** " kmg".index(match[2].lower() or " ")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write data to path so that path holds either its old content or all of data. The temp
    file's name derives from path's (`.tmp-<name>`), so that a later writer knows it for the
    store's own; only a writer holding the store lock calls this, so the name is not shared."""
    tmp = path.with_name(_TMP_PREFIX + path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # the umask must not hide goldens from other users
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(tmp).st_mode):
                os.unlink(tmp)
        raise


def _read_regular_file(path: Path) -> bytes:
    """The bytes of path, which must be a regular file and not a symlink. OSError otherwise:
    ELOOP for a symlink (never followed), EINVAL for a directory, FIFO or device (never
    read: a FIFO would block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return f.read()


def _read_problem(err: OSError) -> str:
    """Why a store file could not be read, as the end of a sentence."""
    if err.errno == errno.ELOOP:
        return "is a symlink; the store reads only its own regular files, never through a symlink"
    if err.errno == errno.EINVAL:
        return "is not a regular file"
    return f"cannot be read: {err.strerror or err}"


def _file_name_problem(name) -> str | None:
    """Why name cannot be a golden file's name in a manifest (None when it can). Golden files
    lie directly in the store's directory: a name is one path component, not hidden (the
    store's own lock, record and temp files are), ending in GOLDEN_SUFFIX."""
    if not isinstance(name, str):
        return f"is {_kind(name)}, expected a file name"
    if os.path.isabs(name):
        return "is an absolute path; golden files lie in the store's directory"
    if "/" in name or ".." in name or "\\" in name or "\0" in name:
        return "leaves the store's directory ('/', '..'); golden files lie directly in it"
    if name.startswith(".") or not name.endswith(GOLDEN_SUFFIX) or name == GOLDEN_SUFFIX:
        return f"is not a golden file name (<case id>.<content digest>{GOLDEN_SUFFIX})"
    return None


def _kind(value) -> str:
    """A JSON value's type and (shortened) value, for messages."""
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _delete_own(path: Path, deleted: list[str] | None) -> None:
    """Remove path if it is a regular file (a symlink or directory is not the store's), and
    note its name in deleted."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return
        path.unlink()
    except FileNotFoundError:
        return
    if deleted is not None:
        deleted.append(path.name)


def _open_lock(lock_path: Path, flags: int) -> int:
    """A descriptor of the lock file; GoldenError if it is a symlink or not a regular file
    (a symlink would make the writer create or lock a file outside the store)."""
    try:
        fd = os.open(lock_path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise GoldenError(f"{lock_path}: the store's lock file is a symlink; the store never follows one "
                              "(remove it: the next writer creates a plain file)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GoldenError(f"{lock_path}: the store's lock file is not a regular file; remove it")
    return fd


@contextlib.contextmanager
def store_lock(directory: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """Exclusive writer lock on <directory>/.lock (waits up to timeout_s, then GoldenError;
    GoldenError at once if .lock is a symlink or not a regular file)."""
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / LOCK_FILE
    fd = _open_lock(lock_path, os.O_RDWR | os.O_CREAT)
    with os.fdopen(fd, "rb+", buffering=0) as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise GoldenError(
                        f"{lock_path}: another writer has held the golden store lock for over "
                        f"{timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _writer_holds_lock(directory: Path) -> bool:
    """Whether a writer holds the store's lock now (a shared lock taken and dropped at once;
    a missing, symlinked or unreadable lock file counts as not held)."""
    try:
        fd = _open_lock(directory / LOCK_FILE, os.O_RDONLY)
    except (GoldenError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)  # also drops the shared lock
    return False


_RESTORE = "restore it from git or regenerate"
# The manifest's top-level keys that readers use, and the JSON types they must have.
_MANIFEST_TYPES = {"platform_key": (str, "a string"), "fingerprint": (dict, "an object"),
                   "max_tensor_bytes": (int, "an integer >= 0"), "cases": (dict, "an object {case id: entry}")}


def _read_manifest(directory: Path) -> dict | None:
    """The parsed manifest, None if there is none; GoldenError, naming the file and what is
    wrong, if it cannot be read, is not UTF-8 JSON, or its top-level keys lack or have the
    wrong types (entries are checked when used: `PlatformGoldens.entry`)."""
    path = directory / MANIFEST
    try:
        data = _read_regular_file(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GoldenError(f"{path}: golden manifest {_read_problem(err)}") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GoldenError(
            f"{path}: golden manifest is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
            f"{_RESTORE}"
        ) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise GoldenError(f"{path}: golden manifest is not valid JSON ({err}); {_RESTORE}") from err
    if not isinstance(manifest, dict):
        raise GoldenError(f"{path}: golden manifest is not a JSON object; {_RESTORE}")
    fmt = manifest.get("format", FORMAT)
    if type(fmt) is not int or fmt != FORMAT:
        raise GoldenError(
            f"{path}: golden manifest format {fmt!r}, this gdn-verify reads {FORMAT}; "
            "regenerate the store with this gdn-verify"
        )
    missing = [k for k in ("format", "platform_key", "fingerprint", "max_tensor_bytes", "cases") if k not in manifest]
    if missing:
        raise GoldenError(f"{path}: golden manifest lacks {missing}; {_RESTORE}")
    for key, (kind, expected) in _MANIFEST_TYPES.items():
        value = manifest[key]
        if type(value) is not kind or (kind is int and value < 0):  # type(): a boolean is no integer here
            raise GoldenError(f"{path}: golden manifest's {key!r} is {_kind(value)}, expected {expected}; {_RESTORE}")
    if manifest["platform_key"] != directory.name:
        raise GoldenError(
            f"{path}: manifest is for platform {manifest['platform_key']!r} but lies in directory "
            f"{directory.name!r}; golden stores must not be renamed"
        )
    return manifest


def _manifest_bytes(manifest: dict) -> bytes:
    """Valid JSON with one line per case (and per top-level key), so that a regeneration's git
    diff names exactly the cases it changed."""
    cases = ",\n".join(
        f"  {json.dumps(case_id)}: {json.dumps(entry, sort_keys=True)}" for case_id, entry in sorted(manifest["cases"].items())
    )
    rest = [f" {json.dumps(k)}: {json.dumps(manifest[k], sort_keys=True)}" for k in sorted(manifest) if k != "cases"]
    return ("{\n" + ",\n".join([' "cases": {\n' + cases + ("\n }" if cases else "}"), *rest]) + "\n}\n").encode()


_SUMMARY_COUNTS = ("n_nan", "n_posinf", "n_neginf")
_SUMMARY_VALUES = ("finite_sum", "finite_l2", "finite_max_abs")


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
        return {k: self.new_summary[k] - self.stored_summary[k] for k in _SUMMARY_COUNTS + _SUMMARY_VALUES}

    def detail(self) -> str:
        """The summary numbers that moved, golden -> now, values at full (repr) precision."""
        if self.new_summary is None:
            return ""
        old, new = self.stored_summary, self.new_summary
        clauses = [f"{k} {old[k]!r} -> {new[k]!r} ({new[k] - old[k]:+.3g})" for k in _SUMMARY_VALUES if old[k] != new[k]]
        counts = [f"{k} {old[k]} -> {new[k]}" for k in _SUMMARY_COUNTS if old[k] != new[k]]
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
        elif _dtype_name(new[name]) != golden[name]["dtype"] or list(new[name].shape) != list(golden[name]["shape"]):
            diffs[name] = (
                f"golden {golden[name]['dtype']}{list(golden[name]['shape'])} -> "
                f"now {_dtype_name(new[name])}{list(new[name].shape)}"
            )
        elif golden[name]["stored"] == STORED_DIGEST:
            diffs[name] = digest_diff(new[name], golden[name])
        else:
            diffs[name] = bit_diff(new[name], stored[name])
    return diffs


def _all_equal(diffs: dict[str, TensorDiff]) -> bool:
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


def _digest_only_differs(diffs: dict[str, TensorDiff]) -> bool:
    return any(isinstance(d, DigestDiff) and not d.equal for d in diffs.values())


# --- reading -----------------------------------------------------------------------------------


def _entry_problem(entry) -> str | None:
    """What is wrong with the structure of a manifest entry (its tensors' metadata aside), as
    the end of a sentence; None when nothing is."""
    if not isinstance(entry, dict):
        return f"is {_kind(entry)}, expected an object"
    missing = [k for k in _ENTRY_KEYS if k not in entry]
    if missing:
        return f"lacks {missing}"
    for key, kind, expected in (("case", dict, "an object"), ("inputs_digest", str, "a string"),
                                ("tensors", dict, "an object {name: metadata}")):
        if not isinstance(entry[key], kind):
            return f"has {key!r} {_kind(entry[key])}, expected {expected}"
    if entry["file"] is not None:
        problem = _file_name_problem(entry["file"])
        if problem is not None:
            return f"has 'file' {entry['file']!r}, which {problem}"
    sha = entry["file_sha256"]
    if (entry["file"] is None) != (sha is None) or not isinstance(sha, (str, type(None))):
        return f"has 'file' {entry['file']!r} with 'file_sha256' {_kind(entry['file_sha256'])}"
    return None


def _tensor_meta_problem(meta: dict) -> str | None:
    """What is wrong with the types of a tensor's metadata (its keys present), or None."""
    for key in ("sha256", "dtype"):
        if not isinstance(meta[key], str):
            return f"{key} is {_kind(meta[key])}, expected a string"
    shape = meta["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return f"shape is {_kind(shape)}, expected a list of integers >= 0"
    if meta["stored"] == STORED_DIGEST:
        summary = meta["summary"]
        if not isinstance(summary, dict):
            return f"summary is {_kind(summary)}, expected an object"
        bad = [k for k in _SUMMARY_COUNTS if type(summary.get(k)) is not int]
        bad += [k for k in _SUMMARY_VALUES if type(summary.get(k)) not in (int, float)]
        if bad:
            return f"summary lacks numbers {bad}"
    return None


def _stored_in_file(entry: dict) -> dict[str, dict]:
    """The tensor metadata of an entry's tensors that its file holds (the others are digest only)."""
    return {name: meta for name, meta in entry["tensors"].items() if meta["stored"] == STORED_FILE}


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
        problem = _entry_problem(entry)
        if problem is not None:
            raise GoldenError(f"{manifest_path}: entry of case {case_id!r} {problem}; {_RESTORE}")
        for name, meta in entry["tensors"].items():
            where = f"{manifest_path}: tensor {name!r} of case {case_id!r}"
            if not isinstance(meta, dict):
                raise GoldenError(f"{where} is {_kind(meta)}, expected an object; {_RESTORE}")
            if meta.get("stored") not in _TENSOR_KEYS:
                raise GoldenError(f"{where} has stored={meta.get('stored')!r}, expected one of {sorted(_TENSOR_KEYS)}")
            lacks = [k for k in _TENSOR_KEYS[meta["stored"]] if k not in meta]
            if lacks:
                raise GoldenError(f"{where} lacks {lacks}; {_RESTORE}")
            problem = _tensor_meta_problem(meta)
            if problem is not None:
                raise GoldenError(f"{where}: {problem}; {_RESTORE}")
        in_file = _stored_in_file(entry)
        if bool(in_file) != (entry["file"] is not None):
            raise GoldenError(
                f"{manifest_path}: entry of case {case_id!r} names file {entry['file']!r} but stores "
                f"{sorted(in_file) or 'no tensor'} in a file; {_RESTORE}"
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
            data = _read_regular_file(path)
        except FileNotFoundError:
            raise self._missing_file(path, case_id) from None
        except OSError as err:
            raise GoldenError(f"{path}: golden file of case {case_id!r} {_read_problem(err)}") from err
        if hashlib.sha256(data).hexdigest() != entry["file_sha256"]:
            raise GoldenError(f"{path}: golden file of case {case_id!r} is corrupt (file sha256 differs from the manifest)")
        try:
            tensors = load_safetensors(data)
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise GoldenError(f"{path}: golden file of case {case_id!r} does not parse as safetensors: {err}") from err
        expected = _stored_in_file(entry)
        if set(tensors) != set(expected):
            raise GoldenError(
                f"{path}: golden file of case {case_id!r} holds tensors {sorted(tensors)}, manifest lists {sorted(expected)}"
            )
        for name, meta in expected.items():
            t = tensors[name]
            if _dtype_name(t) != meta["dtype"] or list(t.shape) != list(meta["shape"]):
                raise GoldenError(
                    f"{path}: tensor {name!r} is {_dtype_name(t)}{list(t.shape)}, manifest says {meta['dtype']}{meta['shape']}"
                )
            if tensor_sha256(t) != meta["sha256"]:
                raise GoldenError(f"{path}: tensor {name!r} of case {case_id!r} is corrupt (sha256 differs from the manifest)")
        return entry, tensors

    def _missing_file(self, path: Path, case_id: str) -> GoldenError:
        """The error for a file that the manifest, as opened, names and that is not there. Files
        are immutable and removed only after a writer replaced the manifest, so a changed
        manifest on disk means a concurrent writer, not damage."""
        try:
            now = _read_manifest(self.directory)
        except GoldenError:
            now = None
        if now != self.manifest:
            return GoldenError(
                f"{path}: golden file of case {case_id!r} is gone: the store changed while this run read it "
                f"(a concurrent writer such as `gdn-verify golden regen` replaced {self.directory / MANIFEST} "
                "and removed the file); rerun to compare with the store as it is now"
            )
        if _writer_holds_lock(self.directory):
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
        diffs = diff_tensors(_present(tensors), entry["tensors"], stored)
        return GoldenComparison(case_id, "equal" if _all_equal(diffs) else "different", diffs, entry["inputs_digest"])


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
            manifest = _read_manifest(directory)
            if manifest is not None:
                found.append((manifest["platform_key"], manifest["fingerprint"]))
        return found

    def for_platform(self, fp: dict) -> PlatformGoldens | None:
        """The store whose bits are comparable with a run of fingerprint fp; None if there is none."""
        directory = self.root / platform_key(fp)
        manifest = _read_manifest(directory)
        return None if manifest is None else PlatformGoldens(directory, manifest)

    def not_comparable_message(self, fp: dict) -> str:
        """Why a run of fingerprint fp has nothing to compare with, listing the stores present."""
        lines = [f"goldens not comparable: no store for platform {platform_key(fp)} under {self.root}",
                 f"  this run: {describe(fp)}"]
        stores = self.stores()
        lines += [f"  store {key}: {describe(store_fp)}" for key, store_fp in stores] or ["  (no stores present)"]
        return "\n".join(lines)


# --- writing -----------------------------------------------------------------------------------


def _present(tensors: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if t is not None}


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
    not, and what an interrupted writer left).
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

    @property
    def kept_but_different(self) -> list[CaseChange]:
        return [c for c in self.kept if not _all_equal(c.diffs)]

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
        }

    def _rows(self) -> list[tuple[str, str, str]]:
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
        rows += [(cid, "pruned" if cid in self.pruned else "unused", "in the store, not in this run") for cid in self.unused]
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
        if any(_digest_only_differs(c.diffs) for c in self.replaced + self.kept):
            hints.append(DIGEST_ONLY_HINT)
        return hints

    def render(self) -> str:
        """Plain text for the terminal or a log."""
        lines = [self.headline()]
        lines += [f"  {outcome:<24} {cid}  {detail}".rstrip() for cid, outcome, detail in self._rows()]
        lines += [f"hint: {h}" for h in self.hints()]
        return "\n".join(lines)

    def rich_table(self):
        """The same as render(), as a rich Table (title = headline) for the CLI."""
        from rich.table import Table

        table = Table(title=self.headline(), caption="\n".join(self.hints()) or None)
        for column in ("case", "outcome", "detail"):
            table.add_column(column, overflow="fold")
        for row in self._rows():
            table.add_row(*row)
        return table


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
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


def _case_file_bytes(case_id: str, inputs_digest: str, tensors: dict[str, torch.Tensor]) -> bytes:
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    return _safetensors_bytes(cpu, {"case_id": case_id, "inputs_digest": inputs_digest})


def _storage(t: torch.Tensor, max_tensor_bytes: int) -> str:
    return STORED_FILE if t.numel() * t.element_size() <= max_tensor_bytes else STORED_DIGEST


def _tensor_meta(t: torch.Tensor, stored: str) -> dict:
    meta = {"sha256": tensor_sha256(t), "dtype": _dtype_name(t), "shape": list(t.shape), "stored": stored}
    if stored == STORED_DIGEST:
        meta["summary"] = tensor_summary(t)
    return meta


def _new_entry(case, inputs_digest: str, tensors: dict[str, torch.Tensor], max_tensor_bytes: int,
               provenance: dict) -> tuple[dict, bytes | None]:
    """(manifest entry, file content or None when every tensor is over the cap)."""
    storage = {name: _storage(t, max_tensor_bytes) for name, t in tensors.items()}
    in_file = {name: t for name, t in tensors.items() if storage[name] == STORED_FILE}
    data = _case_file_bytes(case.id, inputs_digest, in_file) if in_file else None
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
            if isinstance(entry, dict) and _file_name_problem(entry.get("file")) is None}


def _read_pending(directory: Path) -> list[str]:
    """The file names an interrupted writer recorded in .pending ([] when there is none)."""
    path = directory / PENDING_FILE
    try:
        data = _read_regular_file(path)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise GoldenError(f"{path}: the store's record of a write under way {_read_problem(err)}; "
                          "remove it if no writer runs") from err
    try:
        names = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        names = None
    if not isinstance(names, list) or any(_file_name_problem(name) is not None for name in names):
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
            _delete_own(directory / name, deleted)
    for name in [*pending, MANIFEST, PENDING_FILE]:
        _delete_own(directory / (_TMP_PREFIX + name), deleted)
    _delete_own(directory / PENDING_FILE, None)


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
    """
    if max_tensor_bytes is not None and (not isinstance(max_tensor_bytes, int) or max_tensor_bytes < 0):
        raise ValueError(f"max_tensor_bytes: expected None or an integer >= 0, got {max_tensor_bytes!r}")
    not_written = [(str(case_id), str(reason)) for case_id, reason in not_passed]
    key = platform_key(fp)
    directory = Path(root) / key
    with store_lock(directory, lock_timeout_s):
        old = _read_manifest(directory)
        if max_tensor_bytes is None:
            max_tensor_bytes = default_max_tensor_bytes(fp) if old is None else old["max_tensor_bytes"]
        report = RegenReport(platform_key=key, directory=directory, force=force, max_tensor_bytes=max_tensor_bytes,
                             not_written=not_written)
        _clean_interrupted_write(directory, old, report.deleted)
        store = PlatformGoldens(directory, old) if old is not None else None
        cases: dict[str, dict] = dict(old["cases"]) if old is not None else {}
        now = _now()
        provenance = {"written": now, "gdn_verify": fp.get("gdn_verify"), "git_commit": fp.get("git_commit")}
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
            tensors = _present(raw_tensors)
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
            if force and not _all_equal(diffs):
                write(case, inputs_digest, tensors)
                report.replaced.append(CaseChange(case_id, diffs, inputs_digest, inputs_digest, rewritten=True))
                continue
            report.kept.append(CaseChange(case_id, diffs, inputs_digest, inputs_digest))
            if _all_equal(diffs) and not _follows_cap(entry, tensors, max_tensor_bytes):
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

        if old is not None and not rewritten and not report.pruned and max_tensor_bytes == old["max_tensor_bytes"]:
            # Nothing changed: the manifest (and its dates) stay as they are.
            return report
        if pending:
            # Recorded before the files exist, so that the next writer can remove them if this
            # one stops before its manifest names them.
            _atomic_write(directory / PENDING_FILE, json.dumps(sorted(p.name for p, _ in pending)).encode())
            _fsync_dir(directory)
        for path, data in pending:
            _atomic_write(path, data)
            report.bytes_written += len(data)
        _fsync_dir(directory)  # the new files' names are durable before a manifest names them
        manifest = {
            "format": FORMAT,
            "platform_key": key,
            "fingerprint": fp,
            "gdn_verify": fp.get("gdn_verify"),
            "git_commit": fp.get("git_commit"),
            "date": now,
            "max_tensor_bytes": max_tensor_bytes,
            "cases": cases,
        }
        # Last: until this replace, the old manifest and every file it names are untouched.
        _atomic_write(directory / MANIFEST, _manifest_bytes(manifest))
        _fsync_dir(directory)
        named = _manifest_files(manifest)
        for name in sorted(_manifest_files(old) - named):
            _delete_own(directory / name, report.deleted)
        _delete_own(directory / PENDING_FILE, None)
    return report
