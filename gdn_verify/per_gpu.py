"""One CLI shard per visible GPU: the commands `nox -s gpu -- --per-gpu` runs (noxfile.py).

Shard k+1 of n runs `gdn-verify run --shard k+1/n --device cuda` with CUDA_VISIBLE_DEVICES set to
the k-th visible GPU, so that each process sees (and compiles for) one GPU as cuda:0; the shards
run side by side, each writing its JSON report, and `gdn-verify report merge` then writes the
reports a single run would have written. Standard library only: nox's own Python imports this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

PER_GPU_FLAG = "--per-gpu"
PER_GPU_ENV = "GDN_PER_GPU"  # =1: the same as --per-gpu
# Printed by the session's Python: the number of GPUs torch sees (after CUDA_VISIBLE_DEVICES).
GPU_COUNT_CODE = "import torch; print(torch.cuda.device_count())"
# Flags that the per-GPU commands set themselves.
_OWN_FLAGS = ("--shard", "--device", "--json", "--markdown", "--impl", "--goldens", "--suite")


def visible_gpus(count: int, cuda_visible_devices: str | None = None) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each shard, one GPU each: the first `count` entries of
    the session's own CUDA_VISIBLE_DEVICES when it sets one (torch numbers only those), else
    0 .. count-1."""
    if count < 0:
        raise ValueError(f"GPU count: expected >= 0, got {count}")
    if cuda_visible_devices is not None and cuda_visible_devices.strip():
        entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
        return entries[:count]
    return [str(k) for k in range(count)]


def wants_per_gpu(posargs: Sequence[str], env: dict) -> tuple[bool, list[str]]:
    """(per GPU?, the other session arguments): --per-gpu among them, or GDN_PER_GPU=1."""
    rest = [a for a in posargs if a != PER_GPU_FLAG]
    return len(rest) < len(posargs) or env.get(PER_GPU_ENV, "") == "1", rest


@dataclass(frozen=True)
class ShardCommand:
    """One shard's process: its arguments, the environment it adds (its GPU), its files."""

    argv: tuple[str, ...]
    env: dict = field(default_factory=dict)
    report: str = ""  # its --json
    log: str = ""  # where its output goes


@dataclass(frozen=True)
class PerGPUPlan:
    shards: tuple[ShardCommand, ...]
    merge: tuple[str, ...]  # `report merge` of the shards' reports into the run's reports


def per_gpu_plan(gpus: Sequence[str], impl: str, goldens: str, out: str, stem: str = "",
                 extra: Sequence[str] = (), suite: str = "gpu", device: str = "cuda",
                 python: str = "python") -> PerGPUPlan:
    """The commands of one kernel's sharded run over `gpus` (visible_gpus): shard i of n writes
    {out}/gpu{stem}.shard{i}.json (its log: .log beside it); the merge writes {out}/gpu{stem}.json,
    .md and {out}/junit-gpu{stem}.xml, what the single-process session writes. `extra`: further
    run arguments (e.g. --cases, --case-timeout), the same for every shard. ValueError when there
    is no GPU or extra sets a flag the plan sets."""
    if not gpus:
        raise ValueError("--per-gpu: no GPU is visible (torch.cuda.device_count() is 0)")
    for arg in extra:
        if arg.split("=", 1)[0] in _OWN_FLAGS:
            raise ValueError(f"--per-gpu: {arg.split('=', 1)[0]} is set per shard by the session; leave it out")
    n = len(gpus)
    cli = (python, "-m", "gdn_verify")
    base = f"{out}/gpu{stem}"
    shards = tuple(
        ShardCommand(argv=(*cli, "run", "--suite", suite, "--impl", impl, "--device", device, "--goldens", goldens,
                           "--shard", f"{i}/{n}", "--json", f"{base}.shard{i}.json", *extra),
                     env={"CUDA_VISIBLE_DEVICES": gpu}, report=f"{base}.shard{i}.json", log=f"{base}.shard{i}.log")
        for i, gpu in enumerate(gpus, start=1))
    merge = (*cli, "report", "merge", *(s.report for s in shards), "--json", f"{base}.json", "--markdown",
             f"{base}.md", "--junit", f"{out}/junit-gpu{stem}.xml")
    return PerGPUPlan(shards, merge)
