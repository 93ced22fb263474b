"""Greylisting with postgrey's behaviour: whitelists, triplets, auto-whitelist, stores.

``Greylister(cfg, open_store(cfg), hostname)`` is what the restriction engine uses;
``await greylister.start()`` before the first ``check()``, ``await greylister.close()``
at shutdown.
"""

from filterd.greylist.greylister import Greylister, GreylistResult, greylist_clock
from filterd.greylist.store import GreylistStore, open_store

__all__ = ["GreylistResult", "GreylistStore", "Greylister", "greylist_clock", "open_store"]
