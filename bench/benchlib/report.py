"""The markdown tables of both benchmarks, rendered from their results JSON."""

from __future__ import annotations

from typing import Any

from .tools import PEERS, WAL_TOOLS


def wal_markdown(out: dict[str, Any]) -> str:
    res = out["results"]
    lines = []
    c = out["corpus"]
    lines.append(
        f"WAL benchmark {out['run_id']}: {c['used']} x 16 MiB segments of pgbench WAL, "
        f"{out['host']['cpus']} CPUs, one process per segment as PostgreSQL calls it.\n"
    )
    for target, title in (
        ("s3", "S3 (moto) through the stunnel TLS endpoint"),
        ("local", "local directory repository"),
    ):
        rows = [r for r in res if r.get("target") == target]
        if not rows:
            continue
        lines.append(f"### {title}\n")
        lines.append(
            "| tool | segments | push seg/s | x pgBackRest | push CPU s "
            "| fetch seg/s | x pgBackRest | fetch CPU s | stored MB | stored/raw | others busy % |"
        )
        lines.append(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        ref = {
            d: next(
                (
                    r
                    for r in rows
                    if r["tool"] == "pgbackrest" and r["direction"] == d and not r.get("error")
                ),
                None,
            )
            for d in ("push", "fetch")
        }
        for name in WAL_TOOLS:
            by = {r["direction"]: r for r in rows if r["tool"] == name}
            if not by:
                continue
            label = next(iter(by.values())).get("label", name)
            p0 = by.get("push") or {}
            nseg = f"{p0.get('segments', '-')}" + (" (cut)" if p0.get("truncated") else "")
            cells = [label, nseg]
            for d in ("push", "fetch"):
                r = by.get(d)
                if not r or r.get("error"):
                    err = (r or {}).get("error", "not run")
                    cells += [f"failed: {err[:40]}" if err else "-", "-", "-"]
                    continue
                rr = ref[d]
                ratio = (
                    f"{r['segments_per_s'] / rr['segments_per_s']:.2f}"
                    if rr and rr["segments_per_s"]
                    else "-"
                )
                cut = f" ({r['segments']}, cut)" if r.get("truncated") else ""
                cells += [f"{r['segments_per_s']:.2f}{cut}", ratio, f"{r['cpu_s']:.1f}"]
            p = by.get("push") or {}
            cells += [
                f"{p['stored_mb']:.1f}" if "stored_mb" in p else "-",
                f"{p['ratio_vs_raw']:.3f}" if p.get("ratio_vs_raw") else "-",
                "/".join(
                    f"{by[d]['others_busy_pct']:.0f}"
                    if by.get(d, {}).get("others_busy_pct") is not None
                    else "-"
                    for d in ("push", "fetch")
                ),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if out.get("single_push_local"):
        lines.append("### Cold start: one `wal-push` of one segment to a fresh local repository\n")
        lines.append("| command | median ms | min ms | max ms | runs |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for r in out["single_push_local"]:
            if r.get("error"):
                lines.append(f"| {r['label']} | failed: {r['error'][:60]} | | | {r['runs']} |")
            else:
                row = (r["label"], r["median_ms"], r["min_ms"], r["max_ms"], r["runs"])
                lines.append("| " + " | ".join(map(str, row)) + " |")
        lines.append("")
    return "\n".join(lines)


def _f(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def backup_markdown(out: dict[str, Any]) -> str:
    res = out["results"]
    L = [
        f"Base backup benchmark {out['run_id']} ({out['host']['cpus']} CPUs), cloudbm from "
        f"{out['cloudbm_source']}\n"
    ]
    for ds, meta in out["datasets"].items():
        rows = [r for r in res if r["phase"] == "backup" and r["dataset"] == ds]
        if not rows:
            continue
        peers = [r for r in rows if r["tool"] in PEERS and not r.get("error")]
        best = min((r["wall_s"] for r in peers), default=None)
        L.append(f"### Backup, data set {ds}: {meta['generator']} ({meta['pgdata_mb']} MB)\n")
        L.append(
            "| tool | wall s | speed vs fastest peer | CPU s | stored MB | stored/PGDATA "
            "| peak RSS MiB (largest process) | peak RSS MiB (tree, sampled) | others busy % |"
        )
        L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            if r.get("error"):
                L.append(f"| {r['label']} | failed: {r['error'][:120]} | | | | | | | |")
                continue
            sp = f"{best / r['wall_s']:.2f}x" if best else "-"
            L.append(
                f"| {r['label']} | {r['wall_s']:.1f} | {sp} | {r['cpu_s']:.1f} | "
                f"{r['stored_mb']:.1f} | {r.get('stored_ratio', 0):.3f} | "
                f"{r['peak_rss_mib']:.0f} | {r['peak_tree_rss_mib']:.0f} | "
                f"{_f(r['others_busy_pct'], 0)} |"
            )
        L.append("")
    for phase, title in (
        (
            "restore",
            "Restore of data set a100, recovery to consistency (--target-immediate, promote)",
        ),
        ("replay", "WAL replay: restore + recovery to the end of the archive"),
    ):
        rows = [r for r in res if r["phase"] == phase]
        if not rows:
            continue
        peers = [r for r in rows if r["tool"] in PEERS and not r.get("error") and "total_s" in r]
        L.append(f"### {title}\n")
        if phase == "restore":
            best = min((r["total_s"] for r in peers), default=None)
            L.append(
                "| tool | restore s | restore CPU s | restore peak RSS MiB (largest/tree) "
                "| start to ready s | (consistent at s) | total s | speed vs fastest peer |"
            )
            L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                if r.get("error") and "total_s" not in r:
                    L.append(f"| {r['label']} | failed: {r['error'][:120]} | | | | | | |")
                    continue
                m = r.get("start_marks_s", {})
                sp = f"{best / r['total_s']:.2f}x" if best else "-"
                L.append(
                    f"| {r['label']} | {r['restore_wall_s']:.1f} | "
                    f"{r['restore_cpu_s']:.1f} | {r['restore_peak_rss_mib']:.0f}/"
                    f"{r['restore_peak_tree_rss_mib']:.0f} | "
                    f"{_f(r['start_start_to_ready_s'], 2)} | "
                    f"{_f(m.get('consistent'), 2)} | {r['total_s']:.1f} | {sp} |"
                )
        else:
            ref = next(
                (r for r in rows if r["tool"] == "pgbackrest" and "segments_per_s" in r), None
            )
            L.append(
                "| tool | restore s | segments | start to promoted s | segments/s | "
                "x pgBackRest | redo s | replay CPU s (server + restore_command) |"
            )
            L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                if "segments_per_s" not in r:
                    L.append(f"| {r['label']} | failed: {r.get('error', '?')[:120]} | | | | | | |")
                    continue
                x = (
                    f"{r['segments_per_s'] / ref['segments_per_s']:.2f}"
                    if ref and ref["segments_per_s"]
                    else "-"
                )
                L.append(
                    f"| {r['label']} | {r['restore_wall_s']:.1f} | {r['segments']} | "
                    f"{r['replay_s']:.1f} | {r['segments_per_s']:.2f} | {x} | "
                    f"{_f(r.get('redo_s'))} | {_f(r.get('replay_cpu_s'))} |"
                )
        L.append("")
    a = {
        r["dataset"]: r
        for r in res
        if r["phase"] == "backup" and r["tool"] == "cloudbm" and not r.get("error")
    }
    scales = [ds for ds in ("a100", "a200", "a400") if ds in a]
    if len(scales) > 1:
        L.append(
            f"cloudbm peak RSS, scale {' -> '.join(ds[1:] for ds in scales)}: "
            + " -> ".join(f"{a[ds]['peak_rss_mib']:.0f}" for ds in scales)
            + " MiB (largest process); wall "
            + " -> ".join(f"{a[ds]['wall_s']:.1f}" for ds in scales)
            + " s\n"
        )
    return "\n".join(L)
