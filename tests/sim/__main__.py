"""Run simulated schedules from the command line.

python -m tests.sim --seeds 0:2000            # a range of seeds, a summary line per failure
python -m tests.sim --replay 1234             # one seed, with the trace of every step
python -m tests.sim --seeds 0:100000 --jobs 2 # the soak
"""

from __future__ import annotations

import argparse
import ast
import multiprocessing
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tests.sim.invariants import CHECKS
from tests.sim.scenario import Report, postgres_database, run_schedule

_OPTIONS: dict[str, Any] = {}


def _one(seed: int) -> Report:
    return run_schedule(seed, **_OPTIONS)


def _force(pairs: list[str]) -> dict[str, Any]:
    return {k: ast.literal_eval(v) for k, v in (p.split("=", 1) for p in pairs)}


def _summary(report: Report) -> str:
    c = report.config
    return (
        f"seed {report.seed}: {report.violations[0]}  "
        f"[{c.mode}, {c.definition}, {len(c.keys)} rows, batch {c.batch_size}, parallelism {c.parallelism}]\n"
        f"    replay: python -m tests.sim --replay {report.seed}{_replay_options()}"
    )


def _replay_options() -> str:
    text = ""
    if "checks" in _OPTIONS:
        text += f" --checks {','.join(sorted(_OPTIONS['checks']))}"
    if "force" in _OPTIONS:
        text += " --force " + " ".join(f"{k}={v!r}" for k, v in _OPTIONS["force"].items())
    if "engine_factory" in _OPTIONS:
        text += " --postgres URL"
    return text


def run_seeds(seeds: Iterable[int], jobs: int = 1) -> tuple[int, list[Report]]:
    seeds = list(seeds)
    failures: list[Report] = []
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            reports = pool.imap_unordered(_one, seeds, chunksize=20)
            failures = [r for r in reports if not r.ok]
    else:
        failures = [r for r in map(_one, seeds) if not r.ok]
    return len(seeds), sorted(failures, key=lambda r: r.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seeds", default="0:200", help="START:STOP")
    parser.add_argument("--replay", type=int, help="run one seed and print its trace")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--checks", help=f"only these checks, comma-separated: {', '.join(CHECKS)}")
    parser.add_argument("--force", nargs="*", default=[], metavar="FIELD=VALUE", help="fix part of the config")
    parser.add_argument("--postgres", metavar="ADMIN_URL", help="run on PostgreSQL (a database per process)")
    args = parser.parse_args(argv)
    if args.postgres:
        _OPTIONS["engine_factory"] = postgres_database(args.postgres)
    if args.checks:
        _OPTIONS["checks"] = frozenset(args.checks.split(","))
    if args.force:
        _OPTIONS["force"] = _force(args.force)
    if args.replay is not None:
        report = run_schedule(args.replay, **_OPTIONS)
        print("\n".join(report.trace))
        print(f"config: {report.config}")
        print(report.final)
        print(f"end: {report.status}, {report.steps} steps")
        for violation in report.violations:
            print(f"VIOLATION: {violation}")
        return 1 if report.violations else 0
    start, stop = (int(x) for x in args.seeds.split(":"))
    began = time.monotonic()
    count, failures = run_seeds(range(start, stop), args.jobs)
    for report in failures:
        print(_summary(report))
    kinds = Counter(re.sub(r"-?\d+", "N", r.violations[0])[:90] for r in failures)
    for kind, n in kinds.most_common():
        print(f"{n:6d}  {kind}")
    print(f"{count} schedules, {len(failures)} failed, {time.monotonic() - began:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
