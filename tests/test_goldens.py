import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gdn_verify import goldens
from gdn_verify.goldens import GoldenError, GoldenStore, regenerate, store_lock, tensor_sha256
from gdn_verify.platform import comparable, fingerprint, platform_key


@dataclass(frozen=True)
class StandInCase:
    """What the store needs from a case: a file-name-safe id and a spec dict."""

    id: str

    def to_dict(self) -> dict:
        return {"id": self.id}


@pytest.fixture(scope="module")
def fp() -> dict:
    return fingerprint("cpu")


def outputs(seed: int, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"o": torch.randn(1, 5, 2, 4, generator=gen).to(dtype), "final_state": torch.randn(1, 2, 3, 4, generator=gen)}


def one_ulp_up(t: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    """A copy with the element at index moved one ULP away from zero (bit pattern + 1)."""
    out = t.clone()
    view = out.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    view[index] += 1
    return out


def run_items(ids_seeds, digest="d0"):
    return [(StandInCase(cid), digest, outputs(seed)) for cid, seed in ids_seeds]


def test_roundtrip_layout_and_manifest(tmp_path, fp):
    report = regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    assert report.added == ["a", "b"] and not report.kept and report.bytes_written > 0
    directory = tmp_path / platform_key(fp)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["fingerprint"]["backend"] == "cpu-interpreter"
    assert set(manifest) >= {"gdn_verify", "git_commit", "date", "cases", "platform_key"}
    entry = manifest["cases"]["a"]
    assert entry["case"] == {"id": "a"} and entry["inputs_digest"] == "d0"
    assert entry["tensors"]["o"]["dtype"] == "bfloat16" and entry["tensors"]["o"]["shape"] == [1, 5, 2, 4]
    assert re.fullmatch(r"a\.[0-9a-f]{12}\.safetensors", entry["file"])
    # One line per case, so a regeneration's git diff names the cases it changed.
    assert [line.lstrip()[:4] for line in (directory / "manifest.json").read_text().splitlines()[2:4]] == ['"a":', '"b":']
    assert (directory / entry["file"]).stat().st_mode & 0o777 == 0o644
    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.case_ids() == {"a", "b"}
    loaded_entry, tensors = store.load("b")
    expected = outputs(2)
    for name in expected:
        assert torch.equal(tensors[name].view(torch.int16 if name == "o" else torch.int32),
                           expected[name].view(torch.int16 if name == "o" else torch.int32))
        assert loaded_entry["tensors"][name]["sha256"] == tensor_sha256(expected[name])
    assert GoldenStore(tmp_path).stores() == [(platform_key(fp), manifest["fingerprint"])]


def test_default_regen_keeps_existing_and_force_replaces_with_diff(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    changed = outputs(1)
    changed["o"] = one_ulp_up(changed["o"], (0, 3, 1, 2))
    items = [(StandInCase("a"), "d0", changed), (StandInCase("b"), "d0", outputs(2)), (StandInCase("c"), "d0", outputs(3))]

    default = regenerate(tmp_path, fp, items)
    assert default.added == ["c"] and not default.replaced
    assert [c.case_id for c in default.kept_but_different] == ["a"]
    store = GoldenStore(tmp_path).for_platform(fp)
    assert torch.equal(store.load("a")[1]["o"], outputs(1)["o"])  # left alone
    assert "--force" in default.render()

    forced = regenerate(tmp_path, fp, items, force=True)
    assert [c.case_id for c in forced.replaced] == ["a"] and not forced.added
    diff = forced.replaced[0].diffs["o"]
    assert diff.n_different == 1 and diff.max_ulp == 1 and diff.first_index == (0, 3, 1, 2)
    assert forced.replaced[0].diffs["final_state"].equal
    assert sorted(c.case_id for c in forced.kept) == ["b", "c"]  # bitwise equal: not rewritten
    store = GoldenStore(tmp_path).for_platform(fp)
    assert torch.equal(store.load("a")[1]["o"], changed["o"])
    assert "max 1 ULP" in forced.render()
    # The replaced file is gone; only files the manifest names remain.
    names = {e["file"] for e in store.manifest["cases"].values()}
    assert {p.name for p in store.directory.glob("*.safetensors")} == names


def test_unchanged_regen_does_not_touch_the_manifest(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    manifest = tmp_path / platform_key(fp) / "manifest.json"
    before = manifest.read_bytes()
    report = regenerate(tmp_path, fp, run_items([("a", 1)]), force=True)
    assert [c.case_id for c in report.kept] == ["a"] and not report.kept_but_different
    assert manifest.read_bytes() == before and report.bytes_written == 0


def test_unused_and_prune(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2), ("c", 3)]))
    report = regenerate(tmp_path, fp, run_items([("b", 2)]))
    assert report.unused == ["a", "c"] and not report.pruned
    assert GoldenStore(tmp_path).for_platform(fp).case_ids() == {"a", "b", "c"}
    pruned = regenerate(tmp_path, fp, run_items([("b", 2)]), prune=True, whole_suite=True)
    assert pruned.pruned == ["a", "c"]
    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.case_ids() == {"b"} and len(list(store.directory.glob("*.safetensors"))) == 1


def test_inputs_changed_is_reported_not_diffed(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)], digest="old"))
    other_bits = run_items([("a", 9)], digest="new")
    report = regenerate(tmp_path, fp, other_bits)
    assert [c.case_id for c in report.inputs_changed] == ["a"] and not report.kept and not report.replaced
    change = report.inputs_changed[0]
    assert change.stored_inputs_digest == "old" and change.new_inputs_digest == "new" and not change.diffs
    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.compare("a", "new", outputs(9)).status == "inputs-changed"
    assert store.compare("a", "old", outputs(1)).status == "equal"
    assert store.compare("a", "old", outputs(9)).status == "different"
    assert store.compare("zz", "old", outputs(1)).status == "missing"
    forced = regenerate(tmp_path, fp, other_bits, force=True)
    assert forced.inputs_changed[0].rewritten
    assert GoldenStore(tmp_path).for_platform(fp).entry("a")["inputs_digest"] == "new"


def test_structural_change_is_described(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    new = outputs(1)
    new["o"] = new["o"].float()
    del new["final_state"]
    comparison = GoldenStore(tmp_path).for_platform(fp).compare("a", "d0", new)
    assert comparison.status == "different"
    assert "bfloat16" in comparison.diffs["o"] and "float32" in comparison.diffs["o"]
    assert "not produced now" in comparison.diffs["final_state"]


def _entry_file(tmp_path, fp, case_id) -> Path:
    store = GoldenStore(tmp_path).for_platform(fp)
    return store.directory / store.entry(case_id)["file"]


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete"])
def test_corrupt_or_missing_file_is_detected(tmp_path, fp, damage):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    path = _entry_file(tmp_path, fp, "a")
    data = bytearray(path.read_bytes())
    if damage == "flip-byte":
        data[-3] ^= 0x01  # inside o's data: the header still parses
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    store = GoldenStore(tmp_path).for_platform(fp)
    expected = "missing" if damage == "delete" else "corrupt"
    with pytest.raises(GoldenError, match=f"{re.escape(str(path))}.*{expected}"):
        store.load("a")
    store.load("b")  # the rest of the store is fine
    report = regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    assert [c.case_id for c in report.corrupt] == ["a"] and not report.corrupt[0].rewritten
    regenerate(tmp_path, fp, run_items([("a", 1)]), force=True)
    GoldenStore(tmp_path).for_platform(fp).load("a")


def test_tensor_level_corruption_is_detected_even_with_a_consistent_file_hash(tmp_path, fp):
    # Someone rewrote the file and its file_sha256 but not the tensor digests.
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    directory = tmp_path / platform_key(fp)
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = manifest["cases"]["a"]
    other = goldens.case_file_bytes("a", "d0", outputs(2))
    (directory / entry["file"]).write_bytes(other)
    entry["file_sha256"] = goldens.hashlib.sha256(other).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GoldenError, match="tensor 'final_state'.*corrupt"):
        GoldenStore(tmp_path).for_platform(fp).load("a")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": 1}'])
def test_bad_manifest_raises(tmp_path, fp, text):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    (tmp_path / platform_key(fp) / "manifest.json").write_text(text)
    with pytest.raises(GoldenError, match="manifest"):
        GoldenStore(tmp_path).for_platform(fp)
    with pytest.raises(GoldenError, match="manifest"):
        regenerate(tmp_path, fp, run_items([("b", 1)]))


def test_renamed_store_directory_is_refused(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    (tmp_path / platform_key(fp)).rename(tmp_path / "somewhere-else")
    with pytest.raises(GoldenError, match="renamed"):
        GoldenStore(tmp_path).stores()


@pytest.mark.parametrize("fail_at", ["second-tensor-file", "manifest"])
def test_crash_before_manifest_replace_leaves_the_old_state(tmp_path, fp, monkeypatch, fail_at):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    old_manifest = (tmp_path / platform_key(fp) / "manifest.json").read_bytes()
    changed_a, changed_b = outputs(1), outputs(2)
    changed_a["o"] = one_ulp_up(changed_a["o"], (0, 0, 0, 0))
    changed_b["final_state"] = one_ulp_up(changed_b["final_state"], (0, 1, 2, 3))
    items = [(StandInCase("a"), "d0", changed_a), (StandInCase("b"), "d0", changed_b), (StandInCase("c"), "d0", outputs(3))]

    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(Path(dst).name)
        failing = Path(dst).name == "manifest.json" if fail_at == "manifest" else len(calls) == 2
        if failing:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(goldens.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        regenerate(tmp_path, fp, items, force=True)
    monkeypatch.setattr(goldens.os, "replace", real_replace)

    directory = tmp_path / platform_key(fp)
    assert (directory / "manifest.json").read_bytes() == old_manifest
    assert not list(directory.glob(".tmp-*"))  # the failed write's temp file was removed
    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.case_ids() == {"a", "b"}
    for cid, seed in (("a", 1), ("b", 2)):
        assert store.compare(cid, "d0", outputs(seed)).status == "equal"
    # The next writer completes the job and removes the orphans of the crashed one.
    report = regenerate(tmp_path, fp, items, force=True)
    assert sorted(c.case_id for c in report.replaced) == ["a", "b"] and report.added == ["c"]
    store = GoldenStore(tmp_path).for_platform(fp)
    assert {p.name for p in directory.glob("*.safetensors")} == {e["file"] for e in store.manifest["cases"].values()}


def test_writer_waits_for_the_lock(tmp_path, fp):
    directory = tmp_path / platform_key(fp)
    done = threading.Event()
    errors = []

    def writer():
        try:
            regenerate(tmp_path, fp, run_items([("late", 4)]), lock_timeout_s=30)
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)
        done.set()

    with store_lock(directory):
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.5)
        assert not done.is_set(), "regenerate ran while another writer held the lock"
        assert not (directory / "manifest.json").exists()
    thread.join(30)
    assert done.is_set() and not errors
    assert GoldenStore(tmp_path).for_platform(fp).case_ids() == {"late"}


def test_lock_timeout_raises(tmp_path, fp):
    with store_lock(tmp_path / platform_key(fp)):
        with pytest.raises(GoldenError, match="lock"):
            regenerate(tmp_path, fp, run_items([("a", 1)]), lock_timeout_s=0.2)


def test_concurrent_writers_lose_no_update(tmp_path, fp):
    # Without the lock, each writer's read-modify-write of the manifest could drop the
    # other's cases.
    barrier = threading.Barrier(3)

    def writer(prefix):
        barrier.wait()
        for i in range(4):
            regenerate(tmp_path, fp, [(StandInCase(f"{prefix}{i}"), "d0", outputs(i))])

    threads = [threading.Thread(target=writer, args=(p,)) for p in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.case_ids() == {f"{p}{i}" for p in "xyz" for i in range(4)}


def test_other_platform_is_not_comparable(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]))
    gpu = dict(fp, backend="cuda", cuda_arch="sm90", gpu_name="NVIDIA H200", triton="3.6.0")
    store = GoldenStore(tmp_path)
    assert store.for_platform(gpu) is None and not comparable(fp, gpu)
    message = store.not_comparable_message(gpu)
    assert "cuda-sm90-triton3.6.0" in message and platform_key(fp) in message and "H200" in message
    assert GoldenStore(tmp_path / "nothing-here").stores() == []


def test_duplicate_and_unsafe_ids_are_rejected(tmp_path, fp):
    with pytest.raises(ValueError, match="twice"):
        regenerate(tmp_path, fp, run_items([("a", 1), ("a", 2)]))
    with pytest.raises(ValueError, match="file name"):
        regenerate(tmp_path, fp, run_items([("../x", 1)]))


def test_report_json_and_regen_table(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("gone", 2)]))
    changed = outputs(1)
    changed["o"] = one_ulp_up(changed["o"], (0, 1, 0, 0))
    report = regenerate(tmp_path, fp, [(StandInCase("a"), "d0", changed)], force=True)
    data = json.loads(json.dumps(report.to_json()))
    assert data["replaced"][0]["diffs"]["o"]["max_ulp"] == 1 and data["unused"] == ["gone"]
    from rich.console import Console

    from gdn_verify.report_tables import regen_table

    console = Console(record=True, width=200)
    console.print(regen_table(report))
    text = console.export_text()
    assert "replaced" in text and "gone" in text and "unused" in text


def test_regen_table_names_ten_unused_goldens_and_counts_the_rest(tmp_path, fp):
    from rich.console import Console

    from gdn_verify.golden_diff import UNUSED_ROWS
    from gdn_verify.report_tables import regen_table

    ids = [f"c{i:02d}" for i in range(UNUSED_ROWS + 3)]
    regenerate(tmp_path, fp, run_items([(cid, i) for i, cid in enumerate(ids)]))
    report = regenerate(tmp_path, fp, run_items([("c00", 0)]))
    assert report.unused == ids[1:]
    console = Console(record=True, width=200)
    console.print(regen_table(report))
    text = console.export_text()
    assert all(cid in text for cid in ids[1:UNUSED_ROWS + 1]) and ids[-1] not in text
    assert "(2 more)" in text and f"{UNUSED_ROWS + 2} unused" in text


# --- size cap: tensors over the store's cap are stored as their digest only ----------------------


def _manifest(tmp_path, fp) -> dict:
    return json.loads((tmp_path / platform_key(fp) / "manifest.json").read_text())


def test_digest_only_tensor_compares_equal_and_detects_one_ulp(tmp_path, fp):
    report = regenerate(tmp_path, fp, run_items([("a", 1)]), max_tensor_bytes=0)
    assert report.n_tensors == 2 and report.n_digest_only == 2 and "2 of 2 tensors stored as digest only" in report.render()
    manifest = _manifest(tmp_path, fp)
    assert manifest["max_tensor_bytes"] == 0
    entry = manifest["cases"]["a"]
    assert entry["file"] is None and entry["file_sha256"] is None
    assert {meta["stored"] for meta in entry["tensors"].values()} == {"digest"}
    assert not list((tmp_path / platform_key(fp)).glob("*.safetensors"))  # no payload at all

    store = GoldenStore(tmp_path).for_platform(fp)
    assert store.max_tensor_bytes == 0 and store.load("a")[1] == {}
    same = store.compare("a", "d0", outputs(1))
    assert same.status == "equal" and all(isinstance(d, goldens.DigestDiff) and d.equal for d in same.diffs.values())

    changed = outputs(1)
    changed["final_state"] = one_ulp_up(changed["final_state"], (0, 1, 2, 3))
    found = store.compare("a", "d0", changed)
    assert found.status == "different" and found.diffs["o"].equal
    diff = found.diffs["final_state"]
    assert not diff.equal and diff.new_sha256 == tensor_sha256(changed["final_state"])
    # The sum moves by exactly the one element's change (float64 of float32 values: exact here).
    step = changed["final_state"][0, 1, 2, 3].double() - outputs(1)["final_state"][0, 1, 2, 3].double()
    assert step != 0 and diff.deltas()["finite_sum"] == pytest.approx(float(step), rel=1e-6)
    assert diff.deltas()["n_nan"] == 0
    text = diff.summary()
    assert text.startswith("different (digest only)") and "finite_sum" in text
    as_json = json.loads(json.dumps(found.to_json()))["diffs"]["final_state"]
    assert as_json["digest_only"] and not as_json["equal"] and "golden diff" in as_json["hint"]
    assert as_json["stored_summary"] == entry["tensors"]["final_state"]["summary"]


def test_summary_numbers_are_full_precision_and_count_non_finite(tmp_path, fp):
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0**-30, -3.5, float("nan")], dtype=torch.float32)
    summary = goldens.tensor_summary(x)
    assert (summary["n_nan"], summary["n_posinf"], summary["n_neginf"]) == (2, 1, 1)
    finite = [1.0, 2.0**-30, -3.5]
    assert summary["finite_sum"] == math.fsum(finite)  # exact: 2**-30 is not lost
    assert summary["finite_l2"] == pytest.approx(math.sqrt(math.fsum(v * v for v in finite)), rel=1e-15)
    assert summary["finite_max_abs"] == 3.5
    regenerate(tmp_path, fp, [(StandInCase("nf"), "d0", {"o": x})], max_tensor_bytes=0)
    # Written to and read back from the manifest without losing a bit.
    assert _manifest(tmp_path, fp)["cases"]["nf"]["tensors"]["o"]["summary"] == summary


def test_mixed_store_loads_and_keeps_its_integrity_checks(tmp_path, fp):
    # o (bfloat16, 80 bytes) fits the 80-byte cap, final_state (float32, 96 bytes) does not.
    regenerate(tmp_path, fp, run_items([("a", 1)]), max_tensor_bytes=80)
    regenerate(tmp_path, fp, run_items([("full", 2)]), max_tensor_bytes=1 << 20)
    manifest = _manifest(tmp_path, fp)
    assert manifest["max_tensor_bytes"] == 1 << 20
    assert {n: m["stored"] for n, m in manifest["cases"]["a"]["tensors"].items()} == {"o": "file", "final_state": "digest"}
    assert {m["stored"] for m in manifest["cases"]["full"]["tensors"].values()} == {"file"}

    store = GoldenStore(tmp_path).for_platform(fp)
    entry, tensors = store.load("a")
    assert set(tensors) == {"o"} and torch.equal(tensors["o"], outputs(1)["o"])
    assert set(store.load("full")[1]) == {"o", "final_state"}
    changed = outputs(1)
    changed["o"] = one_ulp_up(changed["o"], (0, 2, 1, 0))
    changed["final_state"] = one_ulp_up(changed["final_state"], (0, 0, 0, 0))
    diffs = store.compare("a", "d0", changed).diffs
    assert isinstance(diffs["o"], goldens.BitDiff) and diffs["o"].max_ulp == 1 and diffs["o"].first_index == (0, 2, 1, 0)
    assert isinstance(diffs["final_state"], goldens.DigestDiff) and not diffs["final_state"].equal

    (store.directory / entry["file"]).unlink()
    with pytest.raises(GoldenError, match="golden file of case 'a' is missing"):
        GoldenStore(tmp_path).for_platform(fp).load("a")


def test_force_regen_reports_digest_level_changes(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1)]), max_tensor_bytes=0)
    changed = outputs(1)
    changed["o"] = one_ulp_up(changed["o"], (0, 4, 1, 3))
    items = [(StandInCase("a"), "d0", changed)]
    kept = regenerate(tmp_path, fp, items)
    assert [c.case_id for c in kept.kept_but_different] == ["a"] and goldens.DIGEST_ONLY_HINT in kept.hints()
    forced = regenerate(tmp_path, fp, items, force=True)
    (change,) = forced.replaced
    assert isinstance(change.diffs["o"], goldens.DigestDiff) and not change.diffs["o"].equal
    assert change.diffs["final_state"].equal
    assert "different (digest only)" in forced.render() and goldens.DIGEST_ONLY_HINT in forced.render()
    assert json.loads(json.dumps(forced.to_json()))["replaced"][0]["diffs"]["o"]["digest_only"]
    assert GoldenStore(tmp_path).for_platform(fp).compare("a", "d0", changed).status == "equal"


def test_a_new_cap_re_stores_reproduced_entries_and_is_kept(tmp_path, fp):
    regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]), max_tensor_bytes=0)
    grown = regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]), max_tensor_bytes=4096)
    assert grown.restored == ["a", "b"] and not grown.replaced and grown.n_digest_only == 0
    store = GoldenStore(tmp_path).for_platform(fp)
    assert torch.equal(store.load("b")[1]["final_state"], outputs(2)["final_state"])
    # Without a cap the store's recorded one applies: nothing to re-store, nothing written.
    again = regenerate(tmp_path, fp, run_items([("a", 1), ("b", 2)]))
    assert again.max_tensor_bytes == 4096 and not again.restored and again.bytes_written == 0
    # Entries whose bits the run does not reproduce are left as they are.
    changed = run_items([("a", 1)])
    changed[0][2]["o"] = one_ulp_up(changed[0][2]["o"], (0, 0, 0, 0))
    shrunk = regenerate(tmp_path, fp, changed + run_items([("b", 2)]), max_tensor_bytes=0)
    assert shrunk.restored == ["b"] and [c.case_id for c in shrunk.kept_but_different] == ["a"]
    manifest = _manifest(tmp_path, fp)
    assert manifest["max_tensor_bytes"] == 0
    assert manifest["cases"]["a"]["file"] is not None and manifest["cases"]["b"]["file"] is None
    with pytest.raises(ValueError, match="max_tensor_bytes"):
        regenerate(tmp_path, fp, run_items([("a", 1)]), max_tensor_bytes=-1)


def test_a_new_store_gets_its_backends_default_cap(tmp_path, fp):
    report = regenerate(tmp_path, fp, run_items([("a", 1)]))
    assert report.max_tensor_bytes == goldens.default_max_tensor_bytes(fp) == 512 * 1024
    assert _manifest(tmp_path, fp)["max_tensor_bytes"] == 512 * 1024


@pytest.mark.parametrize("text, expected", [("0", 0), ("65536", 65536), ("64K", 65536), ("64kib", 65536),
                                            ("1M", 1 << 20), ("2GiB", 2 << 30), (" 3 k ", 3072)])
def test_byte_size(text, expected):
    assert goldens.byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "1.5M", "12Q", "K"])
def test_byte_size_rejects(text):
    with pytest.raises(ValueError, match="byte count"):
        goldens.byte_size(text)


@pytest.mark.parametrize("damage", ["bad-stored", "no-summary", "file-without-tensors", "format-1"])
def test_inconsistent_size_cap_metadata_is_an_error(tmp_path, fp, damage):
    regenerate(tmp_path, fp, run_items([("a", 1)]), max_tensor_bytes=80)
    path = tmp_path / platform_key(fp) / "manifest.json"
    manifest = json.loads(path.read_text())
    tensors = manifest["cases"]["a"]["tensors"]
    if damage == "bad-stored":
        tensors["o"]["stored"] = "elsewhere"
    elif damage == "no-summary":
        del tensors["final_state"]["summary"]
    elif damage == "file-without-tensors":
        tensors["o"] = {**tensors["o"], "stored": "digest", "summary": tensors["final_state"]["summary"]}
    else:
        manifest["format"] = 1
        del manifest["max_tensor_bytes"]
    path.write_text(json.dumps(manifest))
    expected = {"bad-stored": "stored='elsewhere'", "no-summary": "lacks \\['summary'\\]",
                "file-without-tensors": "names file", "format-1": "format 1.*regenerate"}[damage]
    with pytest.raises(GoldenError, match=expected):
        GoldenStore(tmp_path).for_platform(fp).load("a")
