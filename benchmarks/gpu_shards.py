"""Split a suite's cases into `--cases` regexes by compile combination, for parallel GPU runs.

On a GPU machine whose Triton cache is cold, every new shape / dtype / flag combination compiles
its kernels (flash-linear-attention's also autotune), so a process that runs one combination's
cases compiles only that combination. One regex per line, at most --per-shard cases each, the
largest shards first (the slowest start first when the lines feed `xargs -P`):

    python3 benchmarks/gpu_shards.py --suite gpu --dtypes bfloat16,float16,float32 > shards.txt
    xargs -a shards.txt -d '\\n' -P 12 -I{} gdn-verify run ... --cases '{}'

--missing-from DIR keeps only the cases that DIR's golden store for this machine lacks;
--warm FILE also writes, for each combination left out that way, its shortest case with at
least one token (a later single process then finds every combination compiled).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from gdn_verify.platform import pin_cpu_dispatch


def combination(case) -> tuple:
    """What decides which kernel variants a case compiles."""
    return (case.H, case.HV, case.K, case.V, case.dtype, case.beta_dtype, case.l2norm, case.init_state)


def stored_cases(root: Path, device: str) -> set[str]:
    from gdn_verify.platform import fingerprint, platform_key

    manifest = root / platform_key(fingerprint(device)) / "manifest.json"
    return set(json.loads(manifest.read_text())["cases"]) if manifest.exists() else set()


def main(argv=None) -> int:
    # Before NumPy and torch load, as the CLI does: a cpu store's key names the capped dispatch.
    pin_cpu_dispatch(reexec=sys.argv if argv is None else None)
    from gdn_verify.suites import SUITES, suite

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=SUITES, default="gpu")
    p.add_argument("--dtypes", help="comma-separated input dtypes to keep (default: all)")
    p.add_argument("--cases", metavar="PATTERN", help="only cases whose id matches this regular expression")
    p.add_argument("--per-shard", type=int, default=8, help="at most this many cases a line (default 8)")
    p.add_argument("--missing-from", metavar="DIR", type=Path, help="only cases this golden store lacks")
    p.add_argument("--device", default="cuda", help="the store's device, with --missing-from (default cuda)")
    p.add_argument("--warm", metavar="FILE", type=Path, help="with --missing-from: write warm-up regexes here")
    args = p.parse_args(argv)
    if args.per_shard < 1:
        p.error("--per-shard must be at least 1")
    dtypes = set(args.dtypes.split(",")) if args.dtypes else None
    have = stored_cases(args.missing_from, args.device) if args.missing_from else set()
    todo, done = defaultdict(list), defaultdict(list)
    for case in suite(args.suite):
        if (dtypes is None or case.dtype in dtypes) and (args.cases is None or re.search(args.cases, case.id)):
            (done if case.id in have else todo)[combination(case)].append(case)
    shards = [ids[i:i + args.per_shard] for ids in ([c.id for c in cases] for cases in todo.values())
              for i in range(0, len(ids), args.per_shard)]
    for ids in sorted(shards, key=len, reverse=True):
        print("^(" + "|".join(re.escape(x) for x in ids) + ")$")
    if args.warm:
        lines = []
        for key, cases in done.items():
            runnable = [c for c in cases if sum(c.seq_lens)]
            if key not in todo and runnable:
                lines.append("^" + re.escape(min(runnable, key=lambda c: sum(c.seq_lens)).id) + "$")
        args.warm.write_text("".join(line + "\n" for line in lines))
    print(f"{sum(map(len, shards))} cases in {len(shards)} shards", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
