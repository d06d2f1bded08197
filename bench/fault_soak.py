#!/usr/bin/env python3
"""The fault soak: the fault suite's whole journey, many rounds, on S3, GCS and Azure.

Each round (tests/integration/test_fault_suite.py) writes data that a real PostgreSQL archives
through cloudbm, takes two backups, verifies, checks, applies retention, and recovers into a new
directory whose data must equal the source's; every request crosses the fault-injecting proxy
(localstack/faultproxy.py) with 20 % of them broken (reset, 503, cut body, cut headers, held,
dropped). The soak runs `--rounds` rounds per backend and prints what happened: requests,
faults injected by kind, cloudbm commands, WAL files archived and restored, archive_command
failures PostgreSQL saw, and whether anything failed or was lost (any failed command or data
mismatch fails that backend's run, and the pytest output says where).

    bench/fault_soak.py                       # 4 rounds on each of s3, gcs, azure
    bench/fault_soak.py --rounds 8 --backends s3

Results: bench/results/soak-<run-id>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV = Path(os.environ.get("CLOUDBM_VENV", "/opt/cloudbm/venv"))
TEST = (
    "tests/integration/test_fault_suite.py::test_the_whole_job_survives_one_request_in_five_failing"
)
KINDS = ("reset", "status-503", "cut-body", "cut-headers", "hold", "drop-response")


def run_backend(backend: str, rounds: int, report: Path) -> tuple[bool, float, str]:
    """One pytest run of the journey on `backend`; (passed, seconds, output tail)."""
    env = dict(os.environ, CLOUDBM_FAULT_ROUNDS=str(rounds), CLOUDBM_FAULT_REPORT=str(report))
    began = time.monotonic()
    res = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-x",
            "-o",
            "timeout=0",
            f"{TEST}[{backend}]",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return res.returncode == 0, time.monotonic() - began, (res.stdout + res.stderr)[-4000:]


def table(rows: list[dict[str, object]]) -> str:
    head = [
        "backend",
        "rounds",
        "result",
        "seconds",
        "requests",
        "faults",
        *KINDS,
        "commands",
        "archived",
        "archive failures",
        "restored",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        kinds = r.get("by_kind") or {}
        assert isinstance(kinds, dict)
        cells = [
            r["backend"],
            r["rounds"],
            r["result"],
            f"{float(str(r['seconds'])):.0f}",
            r.get("requests", "-"),
            r.get("faults", "-"),
            *(kinds.get(k, 0) for k in KINDS),
            r.get("commands", "-"),
            r.get("archived", "-"),
            r.get("archive_command_failures", "-"),
            r.get("restored", "-"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="journey rounds per backend")
    parser.add_argument("--backends", default="s3,gcs,azure")
    args = parser.parse_args(argv)
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="cloudbm-soak-") as scratch:
        for backend in [b for b in args.backends.split(",") if b]:
            report = Path(scratch) / f"{backend}.jsonl"
            passed, seconds, tail = run_backend(backend, args.rounds, report)
            row: dict[str, object] = {"backend": backend, "rounds": args.rounds}
            if report.exists():
                row.update(json.loads(report.read_text().splitlines()[-1]))
            row.update(result="passed" if passed else "FAILED", seconds=seconds)
            if not passed:
                row["output"] = tail
                print(tail, file=sys.stderr)
            rows.append(row)
            print(f"{backend}: {row['result']} in {seconds:.0f}s", file=sys.stderr)
    total = sum(int(str(r.get("faults", 0))) for r in rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{run_id}.json"
    out.write_text(json.dumps({"run_id": run_id, "total_faults": total, "runs": rows}, indent=1))
    print(f"run {run_id}: {total} faults injected in all\n")
    print(table(rows))
    print(f"\nresults: {out}")
    return 0 if all(r["result"] == "passed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
