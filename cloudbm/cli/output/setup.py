"""Output of the setup commands: init, keygen, list-servers and show-config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudbm.cli.output import emit

if TYPE_CHECKING:
    from cloudbm.codec.keys import KeyFiles
    from cloudbm.commands.init import InitResult


def init(args: Any, res: InitResult) -> int:
    d = res.descriptor
    verb = "initialised" if res.created else "already initialised for this cluster:"
    emit(
        args,
        f"{verb} {res.url} (system identifier {d.system_identifier}, PostgreSQL "
        f"{d.pg_major}, encryption {d.encryption}" + (f", key id {d.key_id})" if d.key_id else ")"),
        {"created": res.created, "repository": res.url, "descriptor": d.as_dict()},
    )
    return 0


def keygen(args: Any, written: KeyFiles) -> int:
    if written.public is None:
        emit(
            args,
            f"wrote key file {written.private} (keep it secret, keep a copy)",
            {"key_file": written.private},
        )
    else:
        emit(
            args,
            f"wrote private key {written.private} (restore hosts only) and public "
            f"key {written.public} (database hosts)",
            {"private_key_file": written.private, "public_key_file": written.public},
        )
    return 0


def list_servers(args: Any, names: list[str]) -> int:
    emit(args, "\n".join(names), {"servers": names})
    return 0


def show_config(args: Any, settings: dict[str, Any]) -> int:
    emit(args, "\n".join(f"{k} = {v!r}" for k, v in sorted(settings.items())), settings)
    return 0
