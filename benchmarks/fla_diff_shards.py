"""The JSON benchmarks/fla_summary.py reads for a `golden diff` phase, from the `golden diff
--json` reports of `benchmarks/fla_gpu.sh diff` shards: fla_golden_diff_fresh_processes.json
(processes other than the one that wrote the store), fla_golden_diff_fresh_tuning.json (the same,
with Triton's autotune cache deleted first: FLA_FRESH_TUNING=1) or
fla_golden_diff_other_machine.json (another machine than the store's).

    python3 benchmarks/fla_diff_shards.py --out DIR/fla_golden_diff_other_machine.json \\
        --device "a third machine: ..." --store "..." --date 2026-12-07 --selected 29 \\
        [--cause TEXT] SHARD.diff.json ...

Shards the step's limit stopped before any report are the difference between --selected and the
reports given; a case a shard reached but could not finish is an `error`. Beside the cases, it
sums up what every shard replayed of the store's autotune record and tuned itself, and the
variant audit each shard counted (absent where the diff ran with --no-audit).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from gdn_verify.files import write_atomic


def tensor_row(t: dict) -> dict:
    """One tensor's comparison as fla_summary.diff_cell reads it."""
    row = {"equal": t["equal"], "dtype": t["dtype"], "elements": t["n_elements"], "digest_only": t["digest_only"]}
    if t["equal"]:
        return row
    if t["digest_only"]:
        row.update({f"finite_{k}_delta": t["deltas"][f"finite_{k}"] for k in ("sum", "l2", "max_abs")})
    else:
        row.update(different=t["n_different"], max_ulp=t["max_ulp"])
    return row


def summary(reports: list[dict]) -> dict:
    cases, different = {}, []
    for report in reports:
        for case in report["cases"]:
            cases[case["case_id"]] = case["status"]
            if case["status"] == "different":
                different.append({"case": case["case_id"],
                                  "tensors": {name: tensor_row(t) for name, t in case["detail"].items()}})
    autotune = Counter((r["autotune"]["recorded"], r["autotune"]["replayed"], len(r["autotune"]["tuned_here"]),
                        len(r["autotune"]["not_replayed"])) for r in reports if r.get("autotune"))
    audits = Counter((a["detail"], bool(a.get("settled"))) for r in reports if (a := r.get("variants_after")))
    return {"cases": cases, "different": different, "totals": dict(Counter(cases.values()).most_common()),
            "autotune": [{"shards": n, "recorded": rec, "replayed": rep, "tuned_here": tuned, "not_replayed": missed}
                         for (rec, rep, tuned, missed), n in autotune.most_common()],
            "variant_audit": [{"shards": n, "detail": detail, "settled": settled}
                              for (detail, settled), n in audits.most_common()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="the shards' `golden diff --json` files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", required=True, help="the machine the diff ran on, in words")
    parser.add_argument("--store", required=True, help="which store, written where, in words")
    parser.add_argument("--date", required=True)
    parser.add_argument("--selected", type=int, required=True, help="shard processes started")
    parser.add_argument("--command", default="gdn-verify golden diff --suite gpu --impl fla-chunk --device cuda "
                        "--goldens goldens/fla-chunk --cases SHARD --json (benchmarks/fla_gpu.sh diff)")
    parser.add_argument("--cause", help="what explains the differences, if known")
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.reports]
    out = {"command": args.command, "device": args.device, "date": args.date, "store": args.store,
           "shards": len(reports), "shards_selected": args.selected, **summary(reports)}
    if args.cause:
        out["cause"] = args.cause
    write_atomic(args.out, json.dumps(out, indent=1) + "\n")
    print(f"{args.out}: {out['shards']} of {args.selected} shards, {out['totals']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
