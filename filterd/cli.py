"""The ``filterd`` command: serve, config (postconf), map query (postmap -q), and tools.

``--config FILE`` and ``-o name=value`` are offered before the subcommand and at every
level after it (``filterd quarantine --config F list`` and ``filterd quarantine list
--config F`` are the same); without ``--config`` the configuration is $FILTERD_CONFIG,
then /etc/filterd/filterd.cf, then the embedded default, so all subcommands always agree
on what the daemon would run with.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import filterd
import filterd.registry  # noqa: F401  (installs the parameter table config reads)
from filterd.config import Config, ConfigError, ConfigErrors, defaults

Command = Callable[[argparse.Namespace], int]

#: How many levels of (sub)commands offer --config and -o: ``filterd``, ``filterd
#: quarantine``, ``filterd quarantine list``. Each level stores them under its own name
#: (config_0, override_1, ...): argparse copies a subcommand's defaults over what an outer
#: level parsed, so one shared name would lose ``filterd quarantine --config F list``'s F.
LEVELS = 3


def config_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The --config and -o given at any level: the innermost --config wins; -o options
    apply outermost first, so for one name given at two levels the innermost wins too."""
    path: str | None = None
    overrides: list[str] = []
    for level in range(LEVELS):
        path = getattr(args, f"config_{level}", None) or path
        overrides += getattr(args, f"override_{level}", None) or []
    return path, overrides


def _load(args: argparse.Namespace) -> Config:
    return Config.load(*config_args(args))


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
    """postmap -q. The table does not depend on the configuration, but, as postmap reads
    main.cf, the configuration is read and a broken one is reported, not ignored."""
    from filterd.maps.query import query_command

    _load(args)
    return query_command(args.table, args.keys)


def cmd_check(args: argparse.Namespace) -> int:
    from filterd.content.commands import check_command

    return check_command(_load(args), args.files, args.json)


def cmd_quarantine(args: argparse.Namespace) -> int:
    from filterd.content.commands import quarantine_command

    ids = getattr(args, "ids", None) or ([args.id] if getattr(args, "id", None) else [])
    return quarantine_command(_load(args), args.quarantine_command, ids,
                              kind=getattr(args, "kind", None), limit=getattr(args, "limit", 100),
                              json_out=getattr(args, "json", False))


def cmd_learn(args: argparse.Namespace) -> int:
    from filterd.content.bayes.learn import learn_command

    return learn_command(_load(args), args.spam, args.ham, report=args.report)


def cmd_queue(args: argparse.Namespace) -> int:
    from filterd.mta.tools import queue_command

    return queue_command(_load(args), args)


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
                                "learn": cmd_learn, "queue": cmd_queue}


def _common(parser: argparse.ArgumentParser, level: int) -> argparse.ArgumentParser:
    """Offer --config and -o on ``parser``, a (sub)command ``level`` deep."""
    parser.add_argument("--config", "-c", dest=f"config_{level}", metavar="FILE",
                        help="configuration file (default: $FILTERD_CONFIG, /etc/filterd/filterd.cf, "
                             "embedded); given at several levels, the last one counts")
    parser.add_argument("-o", dest=f"override_{level}", action="append", metavar="NAME=VALUE",
                        help="override a parameter (may be repeated; the last one for a name counts)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _common(argparse.ArgumentParser(
        prog="filterd", description="Anti-spam and anti-virus filter for Postfix"), 0)
    parser.add_argument("--version", action="version", version=f"%(prog)s {filterd.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("serve", help="run the configured services"), 1)
    p = _common(sub.add_parser("config", help="show parameters, like postconf"), 1)
    p.add_argument("-n", action="store_true", help="only parameters set in the configuration file")
    p.add_argument("-d", action="store_true", help="default values")
    p.add_argument("-x", action="store_true", help="expand $name references")
    p.add_argument("names", nargs="*")
    p = _common(sub.add_parser("map", help="lookup table tools, like postmap"), 1)
    msub = p.add_subparsers(dest="map_command", required=True)
    q = _common(msub.add_parser("query", help="look up keys (postmap -q)"), 2)
    q.add_argument("table", metavar="type:name")
    q.add_argument("keys", nargs="+", metavar="KEY")
    p = _common(sub.add_parser("check", help="run the content checks on message files and show the verdicts",
                               epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter), 1)
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("files", nargs="+", metavar="FILE", help="RFC 822 message files ('-' = stdin)")
    p = _common(sub.add_parser("quarantine", help="list, show, release or delete quarantined mail"), 1)
    qsub = p.add_subparsers(dest="quarantine_command", required=True)
    q = _common(qsub.add_parser("list", help="newest quarantined messages"), 2)
    q.add_argument("--kind", choices=["virus", "banned", "unchecked", "spam", "badh"])
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true", help="one JSON object per entry (as postqueue -j)")
    q = _common(qsub.add_parser("show", help="print a quarantined message"), 2)
    q.add_argument("id", metavar="ID")
    q = _common(qsub.add_parser("release", help="reinject to the original recipients"), 2)
    q.add_argument("ids", nargs="+", metavar="ID")
    q = _common(qsub.add_parser("delete", help="remove from the quarantine"), 2)
    q.add_argument("ids", nargs="+", metavar="ID")
    p = _common(sub.add_parser("rules", help="score rules (SpamAssassin language) tools"), 1)
    p.add_argument("--check", action="store_true", required=True,
                   help="load the rules and report what loaded and what is unsupported")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="rule files or directories (default: rules_directory and rules_extra_directories)")
    p = _common(sub.add_parser("learn", help="train the Bayes model, like sa-learn"), 1)
    p.add_argument("--spam", nargs="+", default=[], metavar="PATH",
                   help="spam: files, directories, mbox files or Maildirs")
    p.add_argument("--ham", nargs="+", default=[], metavar="PATH",
                   help="ham: files, directories, mbox files or Maildirs")
    p.add_argument("--report", action="store_true",
                   help="print the score scale's cross-validated recall at 0.1 %% and 1 %% FP and the "
                        "level it chose (alone: those of the scale learned last)")
    p = _common(sub.add_parser("queue", help="list and manage the mail queue, like postqueue/postsuper"), 1)
    qsub = p.add_subparsers(dest="queue_command", required=True)
    q = _common(qsub.add_parser("list", help="list the queue (postqueue -p; --json: postqueue -j)"), 2)
    q.add_argument("--json", action="store_true", help="one JSON object per message")
    _common(qsub.add_parser("flush", help="retry all deferred mail now (postqueue -f)"), 2)
    q = _common(qsub.add_parser("flush-site", help="retry deferred mail for a domain (postqueue -s)"), 2)
    q.add_argument("site", metavar="DOMAIN")
    for name, text in (("hold", "put messages on hold (postsuper -h)"),
                       ("release", "release messages from hold (postsuper -H)"),
                       ("delete", "delete messages (postsuper -d)"),
                       ("requeue", "requeue messages for delivery now (postsuper -r)")):
        q = _common(qsub.add_parser(name, help=text), 2)
        q.add_argument("targets", nargs="+", metavar="ID|ALL [QUEUE]")
    q = _common(qsub.add_parser("cat", help="print a queued message (postcat -q)"), 2)
    q.add_argument("id", metavar="ID")
    return parser


def report_config_errors(exc: ConfigErrors) -> None:
    """Every problem on its own line in file order, as postconf reports main.cf, then
    one fatal line: the run stops only after everything to mend has been shown."""
    for level, problem in exc.problems:
        print(f"filterd: {level}: {problem}", file=sys.stderr)
    count = len(exc.errors)
    print(f"filterd: fatal: {count} error{'s' if count > 1 else ''} in the configuration",
          file=sys.stderr)


#: Exit status on a configuration error: 1, except where 1 already means something else:
#: ``map query`` exits 1 for "not found" (postmap -q), 2 for a table it cannot use;
#: ``check`` exits 1 for "something found" and 2 for an error (see CHECK_EPILOG).
CONFIG_ERROR_STATUS: dict[str, int] = {"map": 2, "check": 2}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigErrors as exc:
        report_config_errors(exc)
    except ConfigError as exc:
        print(f"filterd: fatal: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return CONFIG_ERROR_STATUS.get(args.command, 1)


if __name__ == "__main__":
    sys.exit(main())
