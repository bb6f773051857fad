"""compile_ahead (kernels/_launch.py) and the entry point's first-call use of it.

Loading needs a GPU, so these tests drive compile_ahead with stand-in kernels that record
what Triton would be asked to do (in which process, with which driver answers), and check the
entry point's gate with a stand-in compile_ahead; one test compiles a real stage kernel for
sm_90 in a forked child and finds it in the parent's cache lookup (fork_compile_probe.py).
What the real compiles save is measured on a card (benchmarks/cold_start.py).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gdn_verify.cases import dense
from gdn_verify.inputs import make_inputs
from gdn_verify.kernels import _launch
from gdn_verify.kernels import chunk as chunk_module
from gdn_verify.kernels.chunk import chunk_gated_delta_rule

from kernel_checks import case_kwargs


class _Compiled:
    def __init__(self, log: list, name: str):
        self._log, self._name = log, name

    @property
    def run(self):
        self._log.append(("load", self._name))
        return None


class _StandInKernel:
    """Quacks like a JITFunction to `launch`: a Python fn, a compile cache, [grid](...), warmup."""

    def __init__(self, name: str, log: list, barrier: threading.Barrier | None = None):
        def fn(x, y, BLOCK):
            pass

        fn.__name__ = name
        self.fn, self.device_caches, self._log, self._barrier = fn, {}, log, barrier

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._log.append(("run", self.fn.__name__, grid, args, kwargs))

    def warmup(self, *args, grid, **kwargs):
        self._log.append(("compile", self.fn.__name__, grid, args, kwargs))
        if self._barrier is not None:
            self._barrier.wait()  # every kernel's compile must be in flight at once to pass
        return _Compiled(self._log, self.fn.__name__)


@pytest.fixture
def no_driver(monkeypatch):
    # The real driver would look for a GPU.
    monkeypatch.setattr(_launch, "driver", type("Driver", (), {"active": None})())


def test_launches_inside_compile_instead_of_running(no_driver):
    log: list = []
    first, second = _StandInKernel("first", log), _StandInKernel("second", log)
    with _launch.compile_ahead(torch.device("cpu")):
        _launch.launch(first, (4,), 1, 2, BLOCK=16)
        _launch.launch(second, (8,), 3, 4, BLOCK=32, num_warps=4)
        assert log == []  # nothing compiled or run until the block ends
    assert not [entry for entry in log if entry[0] == "run"]
    compiles = sorted(entry for entry in log if entry[0] == "compile")
    assert compiles == [("compile", "first", (4,), (1, 2), {"BLOCK": 16}),
                        ("compile", "second", (8,), (3, 4), {"BLOCK": 32, "num_warps": 4})]
    assert sorted(entry for entry in log if entry[0] == "load") == [("load", "first"), ("load", "second")]
    # Outside the block, launches run again.
    _launch.launch(first, (4,), 1, 2, BLOCK=16)
    assert log[-1][0] == "run"


def test_kernels_compile_concurrently(no_driver):
    log: list = []
    # Each compile waits until the other one is in flight too: run one after the other, the
    # first would wait out the timeout and break the barrier.
    barrier = threading.Barrier(2, timeout=10)
    with _launch.compile_ahead(torch.device("cpu")):
        _launch.launch(_StandInKernel("first", log, barrier), (1,), 1, 2, BLOCK=16)
        _launch.launch(_StandInKernel("second", log, barrier), (1,), 1, 2, BLOCK=16)
    assert sorted(entry[1] for entry in log if entry[0] == "compile") == ["first", "second"]


def test_variants_of_one_kernel_compile_in_order_in_one_thread(no_driver):
    log: list = []
    threads: list = []

    class Recording(_StandInKernel):
        def warmup(self, *args, grid, **kwargs):
            threads.append(threading.get_ident())
            return super().warmup(*args, grid=grid, **kwargs)

    kernel = Recording("kernel", log)
    with _launch.compile_ahead(torch.device("cpu")):
        for block in (16, 64, 32):
            _launch.launch(kernel, (1,), 1, 2, BLOCK=block)
    assert [entry[4]["BLOCK"] for entry in log if entry[0] == "compile"] == [16, 64, 32]
    assert len(set(threads)) == 1


def test_a_failed_compile_is_raised_and_the_block_can_be_entered_again(no_driver):
    class Broken(_StandInKernel):
        def warmup(self, *args, grid, **kwargs):
            raise RuntimeError("compile failed")

    with pytest.raises(RuntimeError, match="compile failed"):
        with _launch.compile_ahead(torch.device("cpu")):
            _launch.launch(Broken("broken", []), (1,), 1, 2, BLOCK=16)
    log: list = []
    with _launch.compile_ahead(torch.device("cpu")):
        _launch.launch(_StandInKernel("ok", log), (1,), 1, 2, BLOCK=16)
    assert [entry[0] for entry in log] == ["compile", "load"]


def test_timeline_says_where_the_pass_spent_its_time(monkeypatch):
    class SlowDriver:
        @property
        def active(self):
            time.sleep(0.05)  # the helper module's build

    class SlowLoad(_Compiled):
        @property
        def run(self):
            time.sleep(0.03)  # launcher build and module load
            return super().run

    class Slow(_StandInKernel):
        def warmup(self, *args, grid, **kwargs):
            time.sleep(0.2)
            super().warmup(*args, grid=grid, **kwargs)
            return SlowLoad(self._log, self.fn.__name__)

    monkeypatch.setattr(_launch, "driver", SlowDriver())
    with _launch.compile_ahead(torch.device("cpu")):
        _launch.launch(Slow("slow", []), (1,), 1, 2, BLOCK=16)
        _launch.launch(Slow("slow", []), (1,), 1, 2, BLOCK=32)
        _launch.launch(_StandInKernel("quick", []), (1,), 1, 2, BLOCK=16)
    timeline = _launch.compile_timeline()
    assert sorted(timeline) == ["driver", "quick", "slow"]
    assert timeline["driver"]["compile_s"] >= 0.05
    # Both variants, one after the other, each compile apart from its load.
    assert timeline["slow"]["compile_s"] >= 0.4
    assert 0.06 <= timeline["slow"]["load_s"] < 0.3
    assert timeline["quick"]["compile_s"] < 0.05
    # Kernels start once the driver is ready, counted from the pass's start.
    assert all(times["start_s"] >= timeline["driver"]["compile_s"] for name, times in timeline.items()
               if name != "driver")
    # The next pass replaces it.
    monkeypatch.setattr(_launch, "driver", type("Driver", (), {"active": None})())
    with _launch.compile_ahead(torch.device("cpu")):
        _launch.launch(_StandInKernel("other", []), (1,), 1, 2, BLOCK=16)
    assert sorted(_launch.compile_timeline()) == ["driver", "other"]


def test_blocks_do_not_nest(no_driver):
    with _launch.compile_ahead(torch.device("cpu")):
        with pytest.raises(RuntimeError, match="do not nest"):
            with _launch.compile_ahead(torch.device("cpu")):
                pass


def test_entry_point_compiles_ahead_once_per_configuration(monkeypatch, device: str):
    entered: list = []

    @contextlib.contextmanager
    def recording_compile_ahead(dev):
        entered.append(dev)
        yield

    monkeypatch.setattr(chunk_module, "INTERPRET", False)
    monkeypatch.setattr(chunk_module, "compile_ahead", recording_compile_ahead)
    monkeypatch.setattr(chunk_module, "_compiled_configs", set())
    def inputs(T: int, dtype: str) -> dict:
        case = dense(T=T, H=1, HV=2, K=16, V=16, dtype=dtype)
        return case_kwargs(make_inputs(case), case, device)

    chunk_gated_delta_rule(**inputs(20, "float32"))
    assert len(entered) == 1
    chunk_gated_delta_rule(**inputs(20, "float32"))
    assert len(entered) == 1
    chunk_gated_delta_rule(**inputs(70, "float32"))
    assert len(entered) == 1, "T must not make a call count as a new configuration"
    chunk_gated_delta_rule(**inputs(20, "float64"))
    assert len(entered) == 2


class _DriverWithTarget:
    """Triton's driver config, stand-in: its active driver names a device and a target, so
    compile_ahead forks a child per kernel, and a child can swap in its own driver."""

    def __init__(self):
        self.active = self

    def get_current_device(self) -> int:
        return 3

    def get_current_target(self) -> str:
        return "the parent's target"

    def set_active(self, child_driver) -> None:
        self.active = child_driver


class _LoggingKernel(_StandInKernel):
    """Logs each warmup's process, device and target to a file: a child's memory is its own."""

    def __init__(self, name: str, path, fail_in_child: bool = False):
        super().__init__(name, [])
        self._path, self._fail_in_child, self._parent = path, fail_in_child, os.getpid()

    def warmup(self, *args, grid, **kwargs):
        active = _launch.driver.active
        with open(self._path, "a") as f:
            f.write(json.dumps([self.fn.__name__, os.getpid(), active.get_current_device(),
                                active.get_current_target(), kwargs["BLOCK"]]) + "\n")
        if self._fail_in_child and os.getpid() != self._parent:
            raise RuntimeError("the child's compile failed")
        return super().warmup(*args, grid=grid, **kwargs)


def _warmups(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_kernel_compiles_in_its_own_child_and_loads_here(monkeypatch, tmp_path):
    monkeypatch.setattr(_launch, "driver", _DriverWithTarget())
    log = tmp_path / "warmups.jsonl"
    first, second = _LoggingKernel("first", log), _LoggingKernel("second", log)
    with _launch.compile_ahead(torch.device("cpu")):
        _launch.launch(first, (1,), 1, 2, BLOCK=16)
        _launch.launch(second, (1,), 1, 2, BLOCK=16)
        _launch.launch(second, (1,), 1, 2, BLOCK=32)
    here = os.getpid()
    children = {name: {pid for kernel, pid, *_ in _warmups(log) if kernel == name and pid != here}
                for name in ("first", "second")}
    # One child per kernel, its variants in order; each child asked the parent's device and target.
    assert len(children["first"]) == len(children["second"]) == 1 and children["first"] != children["second"]
    in_children = [entry for entry in _warmups(log) if entry[1] != here]
    assert sorted(entry[0] for entry in in_children) == ["first", "second", "second"]
    assert [entry[4] for entry in in_children if entry[0] == "second"] == [16, 32]
    assert all(entry[2:4] == [3, "the parent's target"] for entry in in_children)
    # Then this process reads each variant back and loads it.
    assert sorted((entry[0], entry[4]) for entry in _warmups(log) if entry[1] == here) == \
        [("first", 16), ("second", 16), ("second", 32)]
    assert sorted(entry for entry in first._log + second._log if entry[0] == "load") == \
        [("load", "first"), ("load", "second"), ("load", "second")]
    timeline = _launch.compile_timeline()
    assert timeline["first"]["child_exit"] == timeline["second"]["child_exit"] == 0


def test_a_failed_child_warns_and_its_kernel_compiles_here(monkeypatch, tmp_path):
    monkeypatch.setattr(_launch, "driver", _DriverWithTarget())
    log = tmp_path / "warmups.jsonl"
    with pytest.warns(RuntimeWarning, match="child compiling broken exited with 1"):
        with _launch.compile_ahead(torch.device("cpu")):
            _launch.launch(_LoggingKernel("broken", log, fail_in_child=True), (1,), 1, 2, BLOCK=16)
            _launch.launch(_LoggingKernel("fine", log), (1,), 1, 2, BLOCK=16)
    assert [entry[0] for entry in _warmups(log) if entry[1] == os.getpid()].count("broken") == 1
    timeline = _launch.compile_timeline()
    assert (timeline["broken"]["child_exit"], timeline["fine"]["child_exit"]) == (1, 0)


@pytest.mark.parametrize("why", ["switched off", "daemonic process"])
def test_without_children_the_kernels_compile_in_threads(monkeypatch, tmp_path, why):
    monkeypatch.setattr(_launch, "driver", _DriverWithTarget())
    if why == "switched off":
        monkeypatch.setattr(_launch, "COMPILE_IN_CHILDREN", False)
    else:
        monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    log = tmp_path / "warmups.jsonl"
    with _launch.compile_ahead(torch.device("cpu")):
        _launch.launch(_LoggingKernel("kernel", log), (1,), 1, 2, BLOCK=16)
    assert [entry[1] for entry in _warmups(log)] == [os.getpid()]
    assert "child_exit" not in _launch.compile_timeline()["kernel"]


def test_the_childrens_compiles_are_read_back_here_from_the_disk_cache(tmp_path):
    """Real Triton, no GPU, in a fresh process (this one's interpreter state cannot compile):
    every stage kernel of a first call, compiled by forked children, is a cache hit for the
    parent's look-ups in threads; a variant no child compiled (float64) is not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("fork_compile_probe.py")), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    kernels = ["cumsum_kernel", "kkt_solve_kernel", "l2norm_kernel", "output_kernel", "recurrence_kernel"]
    assert result == {"child_exits": [0], "kernels": kernels, "before": [],
                      "looked_up": [[name, True] for name in kernels], "control": [["cumsum_kernel", False]]}, \
        done.stderr[-2000:]


def test_a_stuck_child_is_killed_and_its_kernel_compiles_here(monkeypatch, tmp_path):
    class Stuck(_LoggingKernel):
        def warmup(self, *args, grid, **kwargs):
            if os.getpid() != self._parent:
                time.sleep(60)
            return super().warmup(*args, grid=grid, **kwargs)

    monkeypatch.setattr(_launch, "driver", _DriverWithTarget())
    monkeypatch.setattr(_launch, "CHILD_TIMEOUT_S", 0.5)
    log = tmp_path / "warmups.jsonl"
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="child compiling stuck exited with -9"):
        with _launch.compile_ahead(torch.device("cpu")):
            _launch.launch(Stuck("stuck", log), (1,), 1, 2, BLOCK=16)
    assert time.perf_counter() - start < 30
    assert [entry[1] for entry in _warmups(log)] == [os.getpid()]


@pytest.mark.gpu
def test_a_first_call_compiled_in_children_runs_and_matches_threads_bit_for_bit(device, tmp_path):
    """On a card: each stage kernel's child exits 0 (a CUDA context inherited by fork is never
    touched), the parent finds every kernel in the cache (compiles nothing itself), and the
    outputs equal those of a first call compiled in threads, bit for bit."""
    if device != "cuda":
        pytest.skip("compiling and loading kernels needs a CUDA device")
    results, probes = {}, {}
    for mode in ("children", "threads"):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = str(tmp_path / f"cache-{mode}")
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("first_call_probe.py")), mode,
                               str(tmp_path / f"{mode}.pt")], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        probes[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        results[mode] = torch.load(tmp_path / f"{mode}.pt")
    kernels = sorted(name for name in probes["children"]["timeline"] if name != "driver")
    assert len(kernels) == 5 and all(probes["children"]["timeline"][name]["child_exit"] == 0
                                     for name in kernels), probes
    assert probes["children"]["compiles"] == [[name, True] for name in kernels], probes
    assert probes["threads"]["compiles"] == [[name, False] for name in kernels], probes
    assert not any("child_exit" in times for times in probes["threads"]["timeline"].values())
    for name in ("o", "final_state"):
        ours, theirs = (results[mode][name].contiguous().view(torch.uint8) for mode in ("children", "threads"))
        assert torch.equal(ours, theirs), name
