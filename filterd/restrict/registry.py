"""Every restriction filterd knows, by name, and the engine built from them."""

from __future__ import annotations

from filterd.config import Config
from filterd.restrict import access, basic, chain, dnsrestrict
from filterd.restrict.engine import Restriction, RestrictionEngine
from filterd.restrict.services import Services

ALL_RESTRICTIONS: dict[str, Restriction] = {
    r.name: r
    for module in (basic, access, dnsrestrict, chain)
    for r in module.RESTRICTIONS
}


def build_engine(cfg: Config, services: Services) -> RestrictionEngine:
    return RestrictionEngine(cfg, services, ALL_RESTRICTIONS)
