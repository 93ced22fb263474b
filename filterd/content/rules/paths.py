"""Where filterd's shipped score rules are, from a source checkout or an installed package.

The rules live in the repository's top-level ``rules/`` directory (DESIGN.md: shipped
defaults). A checkout or editable install finds them next to the package; an installed
wheel carries them as package data under ``filterd/defaults/rules``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped_rules_directory() -> str:
    """The directory holding filterd's own ``*.cf`` rules."""
    checkout = Path(__file__).resolve().parents[3] / "rules"
    if any(checkout.glob("*.cf")):
        return str(checkout)
    return str(resources.files("filterd").joinpath("defaults/rules"))
