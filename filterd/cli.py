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


def cmd_check(args: argparse.Namespace) -> int:
    from filterd.content.commands import EXIT_ERROR, check_command

    try:
        cfg = _load(args)
    except ConfigError as exc:  # main() would return 1, which means "found" here
        print(f"filterd: fatal: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return check_command(cfg, args.files, args.json)


def cmd_quarantine(args: argparse.Namespace) -> int:
    from filterd.content.commands import quarantine_command

    ids = getattr(args, "ids", None) or ([args.id] if getattr(args, "id", None) else [])
    return quarantine_command(_load(args), args.quarantine_command, ids,
                              kind=getattr(args, "kind", None), limit=getattr(args, "limit", 100),
                              json_out=getattr(args, "json", False))


def cmd_learn(args: argparse.Namespace) -> int:
    from filterd.content.bayes.learn import learn_command

    return learn_command(_load(args), args.spam, args.ham)


def cmd_rules(args: argparse.Namespace) -> int:
    from filterd.content.rules import rule_paths
    from filterd.content.rules.check import rules_check_command

    cfg = _load(args)
    return rules_check_command(args.paths or rule_paths(cfg), engine=cfg.get("rules_engine"))


CHECK_EPILOG = """\
exit status (the highest that applies to any FILE), as clamdscan and spamassassin -e:
  0  every message is clean: the content filter would pass it, nothing found
  1  something was found: spam (at or above spam_tag2_level), a virus, a banned part,
     a part that could not be checked (UNCHECKED), or header/body checks that reject,
     discard or hold it
  2  error: a FILE or the configuration could not be read, or bad command line usage
  3  a check could not run now (clamd down, a table that cannot answer): the content
     filter would answer 451 and Postfix would try again later
The score and every rule that fired are shown even when a check failed; the action
shown is what the content filter would do."""

COMMANDS: dict[str, Command] = {"rules": cmd_rules, "serve": cmd_serve, "config": cmd_config, "map": cmd_map,
                                "check": cmd_check, "quarantine": cmd_quarantine,
                                "learn": cmd_learn}


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
    p = sub.add_parser("check", parents=[common],
                       help="run the content checks on message files and show the verdicts",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("files", nargs="+", metavar="FILE", help="RFC 822 message files ('-' = stdin)")
    p = sub.add_parser("quarantine", parents=[common], help="list, show, release or delete quarantined mail")
    qsub = p.add_subparsers(dest="quarantine_command", required=True)
    q = qsub.add_parser("list", parents=[common], help="newest quarantined messages")
    q.add_argument("--kind", choices=["virus", "banned", "unchecked", "spam", "badh"])
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true", help="one JSON object per entry (as postqueue -j)")
    q = qsub.add_parser("show", parents=[common], help="print a quarantined message")
    q.add_argument("id", metavar="ID")
    q = qsub.add_parser("release", parents=[common], help="reinject to the original recipients")
    q.add_argument("ids", nargs="+", metavar="ID")
    q = qsub.add_parser("delete", parents=[common], help="remove from the quarantine")
    q.add_argument("ids", nargs="+", metavar="ID")
    p = sub.add_parser("rules", parents=[common], help="score rules (SpamAssassin language) tools")
    p.add_argument("--check", action="store_true", required=True,
                   help="load the rules and report what loaded and what is unsupported")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="rule files or directories (default: rules_directory and rules_extra_directories)")
    p = sub.add_parser("learn", parents=[common], help="train the Bayes model, like sa-learn")
    p.add_argument("--spam", nargs="+", default=[], metavar="PATH",
                   help="spam: files, directories, mbox files or Maildirs")
    p.add_argument("--ham", nargs="+", default=[], metavar="PATH",
                   help="ham: files, directories, mbox files or Maildirs")
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
