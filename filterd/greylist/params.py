"""Parameters of filterd.greylist."""

from __future__ import annotations

from filterd.config.types import Param

PARAMS: list[Param] = []
