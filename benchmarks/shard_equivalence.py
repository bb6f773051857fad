"""Is a merged sharded run the single run? Compares two JSON reports of the same cases.

`gdn-verify report merge` of N `run --shard I/N` reports must give the report one process gives
over the same selection: verdict, totals, every case's checks, invariants and golden results
(report_merge.comparable drops only timing and the host fields). This prints the verdict of each,
each wall time given, and every case or field that differs, and writes it as JSON:

    python3 benchmarks/shard_equivalence.py single.json merged.json --wall single=212.4 \\
        --wall shard1=61.0 ... --json benchmarks/results/h100/shards_one_gpu.json

Exit 0 when they are the same, 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gdn_verify.report_merge import comparable


def differences(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ, as paths (case lists indexed by case id)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (differences(a.get(k), b.get(k), f"{path}/{k}") if k in a and k in b else [f"{path}/{k}"])]
    if isinstance(a, list) and isinstance(b, list):
        if path.endswith("/cases"):
            a, b = ({c["id"]: c for c in x} for x in (a, b))
            return differences(a, b, path)
        if len(a) != len(b):
            return [f"{path} (length {len(a)} vs {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("single", type=Path, help="the single process's --json report")
    p.add_argument("merged", type=Path, help="`gdn-verify report merge --json` of the shards")
    p.add_argument("--wall", action="append", default=[], metavar="NAME=SECONDS",
                   help="a wall time to record (the single process, each shard, the shards together)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    single, merged = (json.loads(path.read_text()) for path in (args.single, args.merged))
    found = differences(comparable(single), comparable(merged))
    walls = {name: float(value) for name, value in (w.split("=", 1) for w in args.wall)}
    summary = {"single": {"passed": single["passed"], "totals": single["totals"]},
               "merged": {"passed": merged["passed"], "totals": merged["totals"],
                          "shards": len(merged.get("merged_from", []))},
               "cases": len(single["cases"]), "equal": not found, "differences": found[:200],
               "wall_s": walls, "device": single["fingerprint"].get("gpu_name") or single["device"]}
    print(f"single: passed={single['passed']} {single['totals']}")
    print(f"merged ({summary['merged']['shards']} shards): passed={merged['passed']} {merged['totals']}")
    for name, seconds in walls.items():
        print(f"wall {name}: {seconds:.1f} s")
    print(f"{len(single['cases'])} cases: " + ("the same report" if not found else
                                               f"{len(found)} differences, first: {found[:10]}"))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
