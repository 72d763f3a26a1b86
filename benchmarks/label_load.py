"""Load test of the labelling page on loopback: N concurrent labelers × V votes each.

Each simulated labeler signs in, then V times loads the page (GET /: its next pair and a form
token) and posts a vote (POST /vote), as a browser does. The server runs in its own process
with a fresh SQLite database (or ``--db`` URL, e.g. PostgreSQL). Printed: response times
(p50/p95/p99/max) of page loads, votes and both, votes/s, and the check that every accepted
vote is stored exactly once with the choice sent. The baseline is one labeler alone, measured
in the same run, so the ratio shows what concurrency costs on this machine.

    python benchmarks/label_load.py                       # 20 labelers × 50 votes
    python benchmarks/label_load.py --labelers 40 --votes 25 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.label.loadtest import check_stored, run_load


def measure(db: str | None, tmp: str, name: str, labelers: int, votes: int) -> dict:
    url = db or f"sqlite:///{os.path.join(tmp, name + '.db')}"
    result = run_load(url, labelers, votes)
    summary = result.summary()
    summary["problems"] = check_stored(url, result) + result.errors
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelers", type=int, default=20)
    p.add_argument("--votes", type=int, default=50, help="votes per labeler")
    p.add_argument("--db", help="SQLAlchemy URL of an empty database (default: a temporary SQLite file)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="label-load-") as tmp:
        baseline = measure(None, tmp, "baseline", 1, args.votes)
        loaded = measure(args.db, tmp, "load", args.labelers, args.votes)
    out = {"baseline_1_labeler": baseline, "load": loaded,
           "p95_ratio_vs_baseline": round(loaded["all_p95_ms"] / baseline["all_p95_ms"], 2),
           "load_avg": os.getloadavg()[0], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"labelling server on loopback, {args.labelers} labelers × {args.votes} votes (baseline: 1 labeler)")
        print(f"{'':24}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for label, s in (("1 labeler", baseline), (f"{args.labelers} labelers", loaded)):
            for kind in ("page", "vote", "all"):
                print(f"{label + ' ' + kind:24}{s[f'{kind}_p50_ms']:>9}{s[f'{kind}_p95_ms']:>9}"
                      f"{s[f'{kind}_p99_ms']:>9}{s[f'{kind}_max_ms']:>9}")
        print(f"p95 (page + vote) with {args.labelers} labelers: {loaded['all_p95_ms']} ms "
              f"= {out['p95_ratio_vs_baseline']}× one labeler alone")
        print(f"throughput: {loaded['votes_per_s']} votes/s; {loaded['votes_sent']} votes accepted in {loaded['seconds']} s")
        print(f"stored exactly once, as sent: {'yes' if not loaded['problems'] else 'NO: ' + '; '.join(loaded['problems'][:5])}")
        print(f"machine: {out['cpus']} CPUs, 1-min load {out['load_avg']:.1f} (shared: figures are noisy above {out['cpus']})")
    return 1 if loaded["problems"] or baseline["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
