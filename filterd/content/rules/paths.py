"""Where score rules are: filterd's own (package data) and SpamAssassin's, when installed.

filterd's own rules are package data, the same in a checkout and an installed package (the
repository's top-level ``rules/`` holds links to these files).

SpamAssassin's rules are never copied into filterd: they are loaded from where the system
keeps them, the way ``spamassassin`` itself finds them. Rules fetched by ``sa-update`` live
in ``/var/lib/spamassassin/<version>/updates_spamassassin_org/`` and replace the rules
the package installed in ``/usr/share/spamassassin`` (SpamAssassin reads the update
directory instead of the default one whenever it exists); with several ``<version>``
directories the highest version is the newest set.
"""

from __future__ import annotations

import glob
import os
import re
from importlib import resources

#: Debian's (and SpamAssassin's default) DEF_RULES_DIR.
SA_DEFAULT_RULES_DIR = "/usr/share/spamassassin"
#: SpamAssassin's LOCAL_STATE_DIR, where sa-update writes a directory per SA version.
SA_UPDATES_DIR = "/var/lib/spamassassin"
#: The channel directory sa-update writes for the official rules.
SA_UPDATES_CHANNEL = "updates_spamassassin_org"

_VERSION = re.compile(r"^\d+(?:\.\d+)*$")


def shipped_rules_directory() -> str:
    """The directory holding filterd's own ``*.cf`` rules."""
    return str(resources.files("filterd").joinpath("defaults/rules"))


def _has_rules(directory: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(directory), "*.cf")))


def spamassassin_rules_directory(default_dir: str = SA_DEFAULT_RULES_DIR,
                                 updates_dir: str = SA_UPDATES_DIR) -> str | None:
    """SpamAssassin's installed rules, as SpamAssassin would pick them, or None.

    The newest ``sa-update`` channel directory holding ``*.cf`` files wins (version
    directories such as ``4.000001`` compared numerically), then the package's rules.
    """
    try:
        versions = [v for v in os.listdir(updates_dir) if _VERSION.match(v)]
    except OSError:
        versions = []
    for version in sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True):
        channel = os.path.join(updates_dir, version, SA_UPDATES_CHANNEL)
        if _has_rules(channel):
            return channel
    return default_dir if _has_rules(default_dir) else None


def default_extra_rules_directories() -> str:
    """The default of ``rules_extra_directories``: SpamAssassin's rules where installed."""
    return spamassassin_rules_directory() or ""
