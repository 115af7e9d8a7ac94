"""Run the benchmarks: `make bench` or `.venv/bin/python -m bench.run [--only verify|http] [sizes...]`.

    verify  bench.ledger_verify: `flask ledger verify` throughput vs a bare SELECT of the same rows
    http    bench.http_scans:    POST /scans and /deposits under gunicorn vs GET /healthz

Options of both are accepted here (see --help); `make bench BENCH_ARGS="--only http --workers 2,4"`.
Each run prints a table per benchmark, a one-line summary per benchmark at the end, and saves the figures as
JSON under bench/results/. Exit status: 0 when every benchmark ran and every scan/deposit got its 201; targets
that are not met are reported, not failed.
"""

from __future__ import annotations

import time

from bench import http_scans, ledger_verify
from bench.common import machine, make_parser, run_and_save, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("python -m bench.run", __doc__)
    parser.add_argument("--only", choices=("verify", "http"), help="run only this benchmark")
    ledger_verify.add_arguments(parser)
    http_scans.add_arguments(parser)
    args = parser.parse_args(argv)

    print(f"machine: {machine()}", flush=True)
    started = time.perf_counter()
    summaries: list[str] = []
    results: dict = {}
    status = 0
    if args.only in (None, "verify"):
        results["ledger_verify"] = run_and_save("ledger_verify", ledger_verify.run, args)
        summaries.append(results["ledger_verify"]["summary"])
    if args.only in (None, "http"):
        results["http_scans"] = run_and_save("http_scans", http_scans.run, args)
        summaries += results["http_scans"]["summary"].splitlines()
        if not results["http_scans"]["all_created"]:
            status = 1
    print(f"\n== summary ({time.perf_counter() - started:.0f}s)")
    for line in summaries:
        print(line)
    return status


if __name__ == "__main__":
    run_cli(main)
