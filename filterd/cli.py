"""The ``filterd`` command: serve, config (postconf), map query (postmap -q), and tools.

Every subcommand takes ``--config FILE`` (and ``-o name=value`` overrides); without it
the configuration is $FILTERD_CONFIG, then /etc/filterd/filterd.cf, then the embedded
default, so all subcommands always agree on what the daemon would run with.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from filterd.config import Config, ConfigError, defaults

Command = Callable[[argparse.Namespace], int]


def _load(args: argparse.Namespace) -> Config:
    return Config.load(args.config, args.override or ())


def cmd_serve(args: argparse.Namespace) -> int:
    from filterd.log import setup_logging
    from filterd.serve import serve

    cfg = _load(args)
    setup_logging(cfg)
    return serve(cfg)


def cmd_config(args: argparse.Namespace) -> int:
    """postconf: all parameters, ``-n`` only those set, ``-d`` defaults, or named ones."""
    cfg = _load(args)
    table = defaults()
    status = 0
    if args.names:
        names = args.names
    elif args.n:
        names = cfg.names(only_set=True)
    else:
        names = sorted(table) if args.d else cfg.names()
    for name in names:
        if args.d:
            if name not in table:
                print(f"filterd: warning: {name}: unknown parameter", file=sys.stderr)
                status = 1
                continue
            value = table[name].default
        else:
            if not cfg.known(name):
                print(f"filterd: warning: {name}: unknown parameter", file=sys.stderr)
                status = 1
                continue
            value = cfg.expand(name) if args.x else cfg.raw(name)
        print(f"{name} = {value}".rstrip() if value == "" else f"{name} = {value}")
    for warning in cfg.warnings:
        print(f"filterd: warning: {warning}", file=sys.stderr)
    return status


def cmd_map(args: argparse.Namespace) -> int:
    from filterd.maps.query import query_command

    return query_command(args.table, args.keys)


COMMANDS: dict[str, Command] = {"serve": cmd_serve, "config": cmd_config, "map": cmd_map}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE",
                        help="configuration file (default: $FILTERD_CONFIG, /etc/filterd/filterd.cf, embedded)")
    common.add_argument("-o", dest="override", action="append", metavar="NAME=VALUE",
                        help="override a parameter (may be repeated)")
    parser = argparse.ArgumentParser(prog="filterd", description="Anti-spam and anti-virus filter for Postfix")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the configured services")
    p = sub.add_parser("config", parents=[common], help="show parameters, like postconf")
    p.add_argument("-n", action="store_true", help="only parameters set in the configuration file")
    p.add_argument("-d", action="store_true", help="default values")
    p.add_argument("-x", action="store_true", help="expand $name references")
    p.add_argument("names", nargs="*")
    p = sub.add_parser("map", parents=[common], help="lookup table tools, like postmap")
    msub = p.add_subparsers(dest="map_command", required=True)
    q = msub.add_parser("query", parents=[common], help="look up keys (postmap -q)")
    q.add_argument("table", metavar="type:name")
    q.add_argument("keys", nargs="+", metavar="KEY")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"filterd: fatal: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
