"""The identity of an implementation under test, as a golden store records it.

Two parts:

* what it is (`key`): the `--impl` spec and the conventions the adapter declares for the call
  (layout, gate space, ...). Goldens of one implementation are never compared with another's
  unless the user asks for it explicitly: the bits of two implementations differ by design.
* which revision it is: the distribution that provides the function's module and its version
  (importlib.metadata), the git commit of the checkout the module lives in (and whether that
  checkout has uncommitted changes), and a sha256 over the implementation's Python sources
  (`source_digest`). Two revisions of one implementation compare bit for bit; a report names
  what changed between them.

The sources digested are the function's top-level package (every .py file under it, sorted by
path), or the module file itself for a top-level module. Our own kernels are the exception:
their module lives inside gdn_verify, whose harness is not the implementation, so they digest
the gdn_verify.kernels package (kernels/ in the checkout) only.

A manifest written before identities were recorded has none: it is taken as written by our
chunk kernel "gdn" at the gdn-verify version and commit the manifest records (`LEGACY_SPEC`),
which is what wrote every such store.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path

from gdn_verify.conventions import CALL_DEFAULTS, canonical_conventions
from gdn_verify.platform import run_git

LEGACY_SPEC = "gdn"
OUR_PACKAGE, OUR_KERNELS = "gdn_verify", "gdn_verify.kernels"
REVISION_FIELDS = ("distribution", "version", "git_commit", "git_dirty", "source_digest")


def _call_conventions(impl) -> dict:
    """The adapter's call conventions that differ from the common signature's (CALL_DEFAULTS)."""
    out = {}
    for name, default in CALL_DEFAULTS.items():
        if not hasattr(impl, name):
            continue
        value = getattr(impl, name)
        if value != default:
            out[name] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return out


def _module_name(impl) -> str | None:
    fn = getattr(impl, "fn", None)
    try:
        fn = inspect.unwrap(fn) if fn is not None else None
    except ValueError:
        pass
    name = getattr(fn, "__module__", None)
    if not name and ":" in impl.spec:
        name = impl.spec.partition(":")[0]
    return name


def _source_root(module_name: str) -> Path | None:
    """The file or directory whose .py files make up the implementation (see the module doc)."""
    top = module_name.partition(".")[0]
    package = OUR_KERNELS if top == OUR_PACKAGE else top
    module = sys.modules.get(package)
    if module is not None and getattr(module, "__path__", None):
        return Path(list(module.__path__)[0]).resolve()
    if module is not None and getattr(module, "__file__", None):
        return Path(module.__file__).resolve()
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    return Path(spec.origin).resolve() if spec.origin and spec.origin not in ("built-in", "frozen") else None


def source_digest(root: Path) -> tuple[str, int]:
    """(sha256, number of files) over the .py files under root (or of root itself, a file):
    each file's path relative to root and its bytes, in sorted order, caches aside."""
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*.py") if p.is_file() and "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for path in files:
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest(), len(files)


def _distribution(top: str) -> tuple[str | None, str | None]:
    names = importlib.metadata.packages_distributions().get(top) or []
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def _git_revision(path: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout that holds path, or (None, None)."""
    where = path if path.is_dir() else path.parent
    commit = run_git(["rev-parse", "HEAD"], where)
    if commit is None:
        return None, None
    status = run_git(["status", "--porcelain", "--untracked-files=no", "--", "."], where)
    return commit, None if status is None else bool(status)


def implementation_identity(impl) -> dict:
    """The identity of an adapter (gdn_verify.adapters.Adapter): see the module doc. Never raises
    for lack of metadata: unknown parts are None."""
    module_name = _module_name(impl)
    identity = {"spec": impl.spec, "conventions": _call_conventions(impl), "module": module_name,
                "distribution": None, "version": None, "git_commit": None, "git_dirty": None,
                "source_digest": None, "source_files": 0}
    if not module_name:
        return identity
    identity["distribution"], identity["version"] = _distribution(module_name.partition(".")[0])
    root = _source_root(module_name)
    if root is not None and root.exists():
        identity["source_digest"], identity["source_files"] = source_digest(root)
        identity["git_commit"], identity["git_dirty"] = _git_revision(root)
    return identity


def legacy_identity(manifest: dict) -> dict:
    """The identity of a store whose manifest records none: our chunk kernel, at the version and
    commit of gdn-verify that the manifest names."""
    return {"spec": LEGACY_SPEC, "conventions": {}, "module": "gdn_verify.kernels.chunk",
            "distribution": "gdn-verify", "version": manifest.get("gdn_verify"),
            "git_commit": manifest.get("git_commit"), "git_dirty": (manifest.get("fingerprint") or {}).get("git_dirty"),
            "source_digest": None, "source_files": 0, "recorded": False}


def key(identity: dict) -> tuple[str, tuple]:
    """What an implementation is, as opposed to which revision of it."""
    conventions = canonical_conventions(identity.get("conventions") or {})
    return identity.get("spec"), tuple(sorted((k, repr(v)) for k, v in conventions.items()))


def describe_key(identity: dict) -> str:
    conventions = identity.get("conventions") or {}
    extra = ", ".join(f"{k}={v}" for k, v in sorted(conventions.items()))
    return f"{identity.get('spec')!r}" + (f" ({extra})" if extra else "")


def revision(identity: dict) -> dict:
    return {name: identity.get(name) for name in REVISION_FIELDS}


def revision_changes(before: dict, after: dict) -> list[str]:
    """The revision fields that differ, as "field: before -> after" (sources digests shortened).
    A field unknown on either side is not counted as a change."""
    out = []
    for name in REVISION_FIELDS:
        a, b = before.get(name), after.get(name)
        if a is None or b is None or a == b:
            continue
        if name in ("source_digest", "git_commit"):
            a, b = str(a)[:12], str(b)[:12]
        out.append(f"{name}: {a} -> {b}")
    return out


def describe_revision(identity: dict) -> str:
    """One line: "gdn-verify 0.1.0, git 1a2b3c4d5e6f (uncommitted changes), sources 9f8e7d6c5b4a (18 files)"."""
    parts = []
    if identity.get("distribution"):
        parts.append(f"{identity['distribution']} {identity.get('version') or '?'}")
    if identity.get("git_commit"):
        parts.append(f"git {identity['git_commit'][:12]}" + (" (uncommitted changes)" if identity.get("git_dirty") else ""))
    if identity.get("source_digest"):
        n = identity.get("source_files")
        parts.append(f"sources {identity['source_digest'][:12]} ({n} file{'' if n == 1 else 's'})")
    if identity.get("recorded") is False:
        parts.append("store written before identities were recorded")
    return ", ".join(parts) or "unknown revision"
