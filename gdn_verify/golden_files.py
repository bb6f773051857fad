"""Golden store files: hashing, atomic writes, reads that never follow a symlink, the
writers' lock, the manifest's parsing and its diff-friendly bytes. The store's layout and its
safety rules are described in gdn_verify/goldens.py, which re-exports the public names."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gdn_verify.files import write_atomic
from gdn_verify.platform import CUDA_BACKEND, INTERPRETER_BACKEND

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
TMP_PREFIX = ".tmp-"
ENTRY_KEYS = ("case", "inputs_digest", "file", "file_sha256", "tensors")
TENSOR_KEYS = {STORED_FILE: ("sha256", "dtype", "shape"), STORED_DIGEST: ("sha256", "dtype", "shape", "summary")}


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


def tensor_dtype_name(t: torch.Tensor) -> str:
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


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_store_file(path: Path, data: bytes) -> None:
    """files.write_atomic under the store's rules: the temp file's name derives from path's
    (`.tmp-<name>`), so that a later writer knows it for the store's own, and the file is 0644
    whatever the umask (it must not hide goldens from other users)."""
    write_atomic(path, data, tmp_name=TMP_PREFIX + path.name, mode=0o644)


def read_regular_file(path: Path) -> bytes:
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


def read_problem(err: OSError) -> str:
    """Why a store file could not be read, as the end of a sentence."""
    if err.errno == errno.ELOOP:
        return "is a symlink; the store reads only its own regular files, never through a symlink"
    if err.errno == errno.EINVAL:
        return "is not a regular file"
    return f"cannot be read: {err.strerror or err}"


def file_name_problem(name) -> str | None:
    """Why name cannot be a golden file's name in a manifest (None when it can). Golden files
    lie directly in the store's directory: a name is one path component, not hidden (the
    store's own lock, record and temp files are), ending in GOLDEN_SUFFIX."""
    if not isinstance(name, str):
        return f"is {json_kind(name)}, expected a file name"
    if os.path.isabs(name):
        return "is an absolute path; golden files lie in the store's directory"
    if "/" in name or ".." in name or "\\" in name or "\0" in name:
        return "leaves the store's directory ('/', '..'); golden files lie directly in it"
    if name.startswith(".") or not name.endswith(GOLDEN_SUFFIX) or name == GOLDEN_SUFFIX:
        return f"is not a golden file name (<case id>.<content digest>{GOLDEN_SUFFIX})"
    return None


def json_kind(value) -> str:
    """A JSON value's type and (shortened) value, for messages."""
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def delete_own(path: Path, deleted: list[str] | None) -> None:
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


def writer_holds_lock(directory: Path) -> bool:
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


RESTORE_HINT = "restore it from git or regenerate"
# The manifest's top-level keys that readers use, and the JSON types they must have.
_MANIFEST_TYPES = {"platform_key": (str, "a string"), "fingerprint": (dict, "an object"),
                   "max_tensor_bytes": (int, "an integer >= 0"), "cases": (dict, "an object {case id: entry}")}


def read_manifest(directory: Path) -> dict | None:
    """The parsed manifest, None if there is none; GoldenError, naming the file and what is
    wrong, if it cannot be read, is not UTF-8 JSON, or its top-level keys lack or have the
    wrong types (entries are checked when used: `PlatformGoldens.entry`)."""
    path = directory / MANIFEST
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GoldenError(f"{path}: golden manifest {read_problem(err)}") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GoldenError(
            f"{path}: golden manifest is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
            f"{RESTORE_HINT}"
        ) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise GoldenError(f"{path}: golden manifest is not valid JSON ({err}); {RESTORE_HINT}") from err
    if not isinstance(manifest, dict):
        raise GoldenError(f"{path}: golden manifest is not a JSON object; {RESTORE_HINT}")
    fmt = manifest.get("format", FORMAT)
    if type(fmt) is not int or fmt != FORMAT:
        raise GoldenError(
            f"{path}: golden manifest format {fmt!r}, this gdn-verify reads {FORMAT}; "
            "regenerate the store with this gdn-verify"
        )
    missing = [k for k in ("format", "platform_key", "fingerprint", "max_tensor_bytes", "cases") if k not in manifest]
    if missing:
        raise GoldenError(f"{path}: golden manifest lacks {missing}; {RESTORE_HINT}")
    for key, (kind, expected) in _MANIFEST_TYPES.items():
        value = manifest[key]
        if type(value) is not kind or (kind is int and value < 0):  # type(): a boolean is no integer here
            raise GoldenError(f"{path}: golden manifest's {key!r} is {json_kind(value)}, expected {expected}; {RESTORE_HINT}")
    if manifest["platform_key"] != directory.name:
        raise GoldenError(
            f"{path}: manifest is for platform {manifest['platform_key']!r} but lies in directory "
            f"{directory.name!r}; golden stores must not be renamed"
        )
    return manifest


def manifest_bytes(manifest: dict) -> bytes:
    """Valid JSON with one line per case (and per top-level key), so that a regeneration's git
    diff names exactly the cases it changed."""
    cases = ",\n".join(
        f"  {json.dumps(case_id)}: {json.dumps(entry, sort_keys=True)}" for case_id, entry in sorted(manifest["cases"].items())
    )
    rest = [f" {json.dumps(k)}: {json.dumps(manifest[k], sort_keys=True)}" for k in sorted(manifest) if k != "cases"]
    return ("{\n" + ",\n".join([' "cases": {\n' + cases + ("\n }" if cases else "}"), *rest]) + "\n}\n").encode()
