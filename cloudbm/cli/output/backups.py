"""Output of backup-push, backup-list, backup-show and verify."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cloudbm.cli.output import emit

if TYPE_CHECKING:
    from cloudbm.catalog import Manifest
    from cloudbm.commands.verify import VerifyReport


def backup_push(args: Any, manifest: Manifest, seconds: float) -> int:
    from cloudbm.commands.backup_push import summary_line

    emit(args, summary_line(manifest, seconds), asdict(manifest))
    return 0


def backup_list(args: Any, rows: list[dict[str, Any]]) -> int:
    from cloudbm.commands.backup_list import format_rows

    emit(args, format_rows(rows), {"backups": rows})
    return 0


def backup_show(args: Any, doc: dict[str, Any]) -> int:
    from cloudbm.commands.backup_list import format_show

    emit(args, format_show(doc), doc)
    return 0


def verify(args: Any, report: VerifyReport) -> int:
    emit(
        args,
        f"backup {report.backup_id} OK: {report.parts} part(s), {report.files} "
        f"files ({report.bytes} bytes) match the manifest; its WAL is archived",
        asdict(report),
    )
    return 0
