"""init, keygen, list-servers and show-config."""

from __future__ import annotations

import os

from cloudbm.cli.context import Args, settings
from cloudbm.cli.output import setup as output


def init(args: Args) -> int:
    from cloudbm.commands.init import init

    return output.init(args, init(settings(args)))


def keygen(args: Args) -> int:
    from cloudbm.codec.keys import keygen

    return output.keygen(args, keygen(args.type, args.output))


def list_servers(args: Args) -> int:
    from cloudbm.config import find_config_path, read_config_file, server_names

    names = server_names(read_config_file(find_config_path(args.config, os.environ)))
    return output.list_servers(args, names)


def show_config(args: Args) -> int:
    return output.show_config(args, settings(args).as_dict())
