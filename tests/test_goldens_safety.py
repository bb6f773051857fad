"""The golden store reads and deletes only its own files, and says clearly when it cannot.

Each test here stands for a way a store was fooled or lost data: file names that leave the
store, symlinks, a user's files next to the goldens, a regeneration that prunes after failures
or on a subset, malformed manifests, unreadable files, unstable file names and a concurrent
writer seen by a reader.
"""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from test_goldens import one_ulp_up, outputs, run_items

from gdn_verify import goldens
from gdn_verify.goldens import GoldenError, GoldenStore, regenerate, store_lock
from gdn_verify.platform import fingerprint, platform_key


@pytest.fixture(scope="module")
def fp() -> dict:
    return fingerprint("cpu")


def _directory(root: Path, fp: dict) -> Path:
    return root / platform_key(fp)


def _edit_manifest(root: Path, fp: dict, edit) -> Path:
    path = _directory(root, fp) / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


# --- file names that leave the store -----------------------------------------------------------


@pytest.mark.parametrize("where", ["dot-dot", "absolute", "symlink-out", "symlink-in"])
def test_a_golden_file_outside_the_store_is_refused(tmp_path, fp, where):
    root = tmp_path / "goldens"
    regenerate(root, fp, run_items([("a", 1), ("b", 2)]))
    directory = _directory(root, fp)
    own = directory / GoldenStore(root).for_platform(fp).entry("a")["file"]
    outside = tmp_path / "other" / "copy.safetensors"
    outside.parent.mkdir()
    shutil.copy(own, outside)  # the very bits of a's golden: read, it would compare "equal"
    if where == "dot-dot":
        name = "../../other/copy.safetensors"
    elif where == "absolute":
        name = str(outside)
    else:
        own.unlink()
        name = own.name
        if where == "symlink-out":
            own.symlink_to(outside)
        else:
            (directory / "elsewhere.safetensors").write_bytes(outside.read_bytes())
            own.symlink_to(directory / "elsewhere.safetensors")

    def point_at(manifest):
        manifest["cases"]["a"]["file"] = name

    _edit_manifest(root, fp, point_at)
    store = GoldenStore(root).for_platform(fp)
    with pytest.raises(GoldenError, match=f"case 'a'.*{re.escape(name)}|{re.escape(name)}.*case 'a'"):
        store.compare("a", "d0", outputs(1))
    assert store.compare("b", "d0", outputs(2)).status == "equal"
    # A forced regeneration rewrites the case and deletes nothing outside the store.
    report = regenerate(root, fp, run_items([("a", 1), ("b", 2)]), force=True, prune=True, whole_suite=True)
    assert [c.case_id for c in report.corrupt] == ["a"]
    assert outside.read_bytes() and all("/" not in name for name in report.deleted)
    assert GoldenStore(root).for_platform(fp).compare("a", "d0", outputs(1)).status == "equal"


def test_a_lock_that_is_a_symlink_is_refused(tmp_path, fp):
    directory = _directory(tmp_path / "goldens", fp)
    directory.mkdir(parents=True)
    target = tmp_path / "not-the-store.lock"
    (directory / ".lock").symlink_to(target)
    with pytest.raises(GoldenError, match=r"\.lock.*symlink"):
        regenerate(tmp_path / "goldens", fp, run_items([("a", 1)]))
    assert not target.exists() and not (directory / "manifest.json").exists()


# --- deletions: only the store's own files -----------------------------------------------------


def test_regen_deletes_only_files_its_manifest_named(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    directory = _directory(tmp_path, fp)
    old_a = GoldenStore(tmp_path).for_platform(fp).entry("a")["file"]
    users = ["backup.safetensors", "a.0123456789ab.safetensors", old_a + ".bak", ".tmp-mine", "notes.txt"]
    for name in users:
        (directory / name).write_bytes(b"a user's file")

    nothing = regenerate(tmp_path, fp, [])  # writes nothing
    assert nothing.deleted == [] and "0 files deleted" in nothing.render()
    changed = run_items([("a", 1), ("b", 2)])
    changed[0][2]["o"] = one_ulp_up(changed[0][2]["o"], (0, 0, 0, 0))
    forced = regenerate(tmp_path, fp, changed, force=True)
    assert forced.deleted == [old_a] and old_a in forced.render()
    old_b = GoldenStore(tmp_path).for_platform(fp).entry("b")["file"]
    pruned = regenerate(tmp_path, fp, changed[:1], prune=True, whole_suite=True)
    assert pruned.pruned == ["b"] and pruned.deleted == [old_b]
    assert json.loads(json.dumps(pruned.to_json()))["deleted"] == [old_b]
    for name in users:
        assert (directory / name).read_bytes() == b"a user's file", name


def test_an_interrupted_write_is_cleaned_up_by_the_next_writer(tmp_path, fp, monkeypatch):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    directory = _directory(tmp_path, fp)
    real_replace = os.replace

    def crash_at_manifest(src, dst):
        if Path(dst).name == "manifest.json":
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(goldens.os, "replace", crash_at_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        regenerate(tmp_path, fp, run_items([("b", 2), ("c", 3)]))
    monkeypatch.setattr(goldens.os, "replace", real_replace)
    orphans = sorted(p.name for p in directory.glob("*.safetensors") if not p.name.startswith("a."))
    assert len(orphans) == 2
    (directory / "user.safetensors").write_bytes(b"mine")
    report = regenerate(tmp_path, fp, [])
    assert report.deleted == orphans
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".lock")) == sorted(
        ["manifest.json", "user.safetensors", GoldenStore(tmp_path).for_platform(fp).entry("a")["file"]])


# --- regeneration outcome and --prune ----------------------------------------------------------


def test_prune_never_runs_on_a_subset(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2), ("c", 3)]))
    report = regenerate(tmp_path, fp, run_items([("b", 2)]), prune=True)
    assert report.pruned == [] and report.deleted == [] and "whole suite" in report.prune_refused
    assert "whole suite" in report.render()
    assert GoldenStore(tmp_path).for_platform(fp).case_ids() == {"a", "b", "c"}


def test_a_case_that_did_not_pass_is_reported_and_blocks_prune(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2), ("old", 3)]))
    report = regenerate(tmp_path, fp, run_items([("b", 2)]), prune=True, whole_suite=True,
                        not_passed=[("a", "fail: o error 3.1e-2 over bound 1e-5")])
    assert report.incomplete and report.not_written == [("a", "fail: o error 3.1e-2 over bound 1e-5")]
    assert report.pruned == [] and "did not pass" in report.prune_refused
    assert report.unused == ["old"]  # a is in the selection: not written, not unused
    text = report.render()
    assert "not written" in text and "o error 3.1e-2" in text and "1 not written" in report.headline()
    data = json.loads(json.dumps(report.to_json()))
    assert data["incomplete"] and data["not_written"] == [{"case_id": "a", "reason": "fail: o error 3.1e-2 over bound 1e-5"}]
    assert GoldenStore(tmp_path).for_platform(fp).case_ids() == {"a", "b", "old"}
    complete = regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    assert not complete.incomplete and complete.prune_refused is None


def test_a_regen_where_every_case_errors_keeps_the_store(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    report = regenerate(tmp_path, fp, [], prune=True, whole_suite=True,
                        not_passed=[("a", "error: RuntimeError: boom"), ("b", "error: RuntimeError: boom")])
    assert report.incomplete and report.pruned == [] and report.deleted == [] and report.unused == []
    assert GoldenStore(tmp_path).for_platform(fp).case_ids() == {"a", "b"}
    empty_run = regenerate(tmp_path, fp, [], prune=True, whole_suite=True)
    assert empty_run.pruned == [] and empty_run.prune_refused


def test_skipped_cases_are_neither_unused_nor_a_failure(tmp_path, fp):
    # A case the implementation does not support is selected: its golden is no prune's target.
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2), ("old", 3)]))
    report = regenerate(tmp_path, fp, run_items([("a", 1)]), prune=True, whole_suite=True, skipped=["b"])
    assert not report.incomplete and report.unused == report.pruned == ["old"]
    assert GoldenStore(tmp_path).for_platform(fp).case_ids() == {"a", "b"}


# --- malformed manifests -----------------------------------------------------------------------


def _set(path: str, value):
    def edit(manifest):
        *keys, last = path.split(".")
        node = manifest
        for key in keys:
            node = node[key]
        node[last] = value
    return edit


_TOP_LEVEL = {
    "max-tensor-bytes-text": (_set("max_tensor_bytes", "64K"), "max_tensor_bytes"),
    "max-tensor-bytes-float": (_set("max_tensor_bytes", 1.5), "max_tensor_bytes"),
    "max-tensor-bytes-bool": (_set("max_tensor_bytes", True), "max_tensor_bytes"),
    "cases-list": (_set("cases", []), "cases"),
    "fingerprint-text": (_set("fingerprint", "cpu"), "fingerprint"),
}
_ENTRY = {
    "entry-text": (_set("cases.a", "a.safetensors"), "case 'a'"),
    "tensors-list": (_set("cases.a.tensors", []), "tensors"),
    "tensor-text": (_set("cases.a.tensors.o", "o"), "tensor 'o'"),
    "shape-text": (_set("cases.a.tensors.o.shape", "1x5x2x4"), "shape"),
    "file-number": (_set("cases.a.file", 7), "file"),
    "digest-number": (_set("cases.a.inputs_digest", 7), "inputs_digest"),
}


@pytest.mark.parametrize("damage", sorted(_TOP_LEVEL))
def test_a_malformed_manifest_is_a_golden_error(tmp_path, fp, damage):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    edit, what = _TOP_LEVEL[damage]
    path = _edit_manifest(tmp_path, fp, edit)
    pattern = f"{re.escape(str(path))}.*{what}"
    with pytest.raises(GoldenError, match=pattern):
        GoldenStore(tmp_path).stores()
    with pytest.raises(GoldenError, match=pattern):
        GoldenStore(tmp_path).for_platform(fp)
    with pytest.raises(GoldenError, match=pattern):
        regenerate(tmp_path, fp, run_items([("a", 1)]))


@pytest.mark.parametrize("damage", sorted(_ENTRY))
def test_a_malformed_manifest_entry_is_a_golden_error(tmp_path, fp, damage):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    edit, what = _ENTRY[damage]
    path = _edit_manifest(tmp_path, fp, edit)
    store = GoldenStore(tmp_path).for_platform(fp)
    with pytest.raises(GoldenError, match=f"{re.escape(str(path))}.*{what}"):
        store.compare("a", "d0", outputs(1))
    assert store.compare("b", "d0", outputs(2)).status == "equal"
    # A regeneration reports the entry as corrupt; with force it writes it anew.
    report = regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]), force=True)
    assert [c.case_id for c in report.corrupt] == ["a"] and what.strip("'") in report.corrupt[0].note
    assert GoldenStore(tmp_path).for_platform(fp).compare("a", "d0", outputs(1)).status == "equal"


def test_a_manifest_that_is_not_utf8_is_a_golden_error(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    path = _directory(tmp_path, fp) / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"d0"', b'"d\xff0"'))
    with pytest.raises(GoldenError, match=f"{re.escape(str(path))}.*UTF-8"):
        GoldenStore(tmp_path).for_platform(fp)


# --- unreadable golden files -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["permission", "directory"])
def test_an_unreadable_golden_file_is_a_golden_error(tmp_path, fp, monkeypatch, damage):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    store = GoldenStore(tmp_path).for_platform(fp)
    path = store.directory / store.entry("a")["file"]
    if damage == "directory":
        path.unlink()
        path.mkdir()
    elif os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads whatever the mode says: deny the open itself
        real_open = goldens.os.open

        def denying_open(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(goldens.os, "open", denying_open)
    with pytest.raises(GoldenError, match=f"{re.escape(str(path))}.*case 'a'"):
        store.load("a")


# --- stable file names -------------------------------------------------------------------------


def test_the_same_tensors_always_get_the_same_file(monkeypatch):
    # safetensors keeps its metadata in a hash map: the order it writes the keys in varies
    # from one call to the next, and with it the file's digest and name.
    tensors = outputs(1)
    written = {goldens.case_file_bytes("a", "d0", tensors) for _ in range(40)}
    assert len(written) == 1
    (data,) = written
    assert data == goldens.safetensors_bytes(tensors, {"inputs_digest": "d0", "case_id": "a"})
    n = int.from_bytes(data[:8], "little")
    assert (8 + n) % 8 == 0 and list(json.loads(data[8:8 + n])["__metadata__"]) == ["case_id", "inputs_digest"]
    loaded = goldens.load_safetensors(data)
    assert all(goldens.tensor_sha256(loaded[k]) == goldens.tensor_sha256(t) for k, t in tensors.items())
    # The same bytes whatever order the library writes the metadata in.
    real_save = goldens.save_safetensors

    def reversing_save(tensors, metadata=None):
        return real_save(tensors, metadata=dict(reversed(list(metadata.items()))))

    monkeypatch.setattr(goldens, "save_safetensors", reversing_save)
    assert goldens.case_file_bytes("a", "d0", tensors) == data


# --- a reader and a concurrent writer ----------------------------------------------------------


def test_a_reader_names_a_concurrent_writer(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    reader = GoldenStore(tmp_path).for_platform(fp)
    changed = run_items([("a", 1)])
    changed[0][2]["o"] = one_ulp_up(changed[0][2]["o"], (0, 0, 0, 0))
    regenerate(tmp_path, fp, changed, force=True)  # replaces a's file while the reader is open
    with pytest.raises(GoldenError, match="store changed while .* read it.*concurrent"):
        reader.compare("a", "d0", outputs(1))
    assert GoldenStore(tmp_path).for_platform(fp).compare("a", "d0", changed[0][2]).status == "equal"


def test_a_missing_file_while_a_writer_holds_the_lock_names_the_writer(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    store = GoldenStore(tmp_path).for_platform(fp)
    path = store.directory / store.entry("a")["file"]
    path.unlink()
    with store_lock(store.directory):
        with pytest.raises(GoldenError, match="missing.*writer holds the store lock"):
            store.load("a")
    with pytest.raises(GoldenError, match="is missing") as plain:
        store.load("a")
    assert "writer" not in str(plain.value)


# --- cases the store has no golden for ---------------------------------------------------------


def test_cases_without_an_entry_are_missing_never_equal(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.missing(["b", "a", "c"]) == ["b", "c"] and store.missing(["a"]) == []
    _edit_manifest(tmp_path, fp, _set("cases", {}))
    empty = GoldenStore(tmp_path).for_platform(fp)
    assert empty.case_ids() == set() and empty.missing(["a", "b"]) == ["a", "b"]
    assert empty.compare("a", "d0", outputs(1)).status == "missing"
