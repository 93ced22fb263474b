"""Parameters of filterd.dnsbl."""

from __future__ import annotations

from filterd.config.types import Param

PARAMS: list[Param] = []
