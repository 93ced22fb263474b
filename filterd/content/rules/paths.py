"""Where filterd's shipped score rules are: package data, the same in a checkout and an
installed package (the repository's top-level ``rules/`` holds links to these files)."""

from __future__ import annotations

from importlib import resources


def shipped_rules_directory() -> str:
    """The directory holding filterd's own ``*.cf`` rules."""
    return str(resources.files("filterd").joinpath("defaults/rules"))
