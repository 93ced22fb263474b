"""The table of every declared parameter, gathered from each part's ``params`` module.

Each part of filterd declares its own parameters beside its code; this module only
collects them, refuses two declarations of one name, and hands the table to
:mod:`filterd.config`. It sits above config (and above every part) so that config imports
no part: an entry point (the CLI, the tests, a benchmark) imports it once before it loads
a configuration.
"""

from __future__ import annotations

from types import ModuleType

from filterd.config import install_params
from filterd.config.types import Param
from filterd import params as _core
from filterd.maps import params as _maps
from filterd.restrict import params as _restrict
from filterd.dnsbl import params as _dnsbl
from filterd.greylist import params as _greylist
from filterd.policy import params as _policy
from filterd.content import params as _content
from filterd.mta import params as _mta
from filterd.milter import params as _milter


def _collect(*modules: ModuleType) -> dict[str, Param]:
    table: dict[str, Param] = {}
    for mod in modules:
        for p in mod.PARAMS:
            if p.name in table:
                raise RuntimeError(f"parameter {p.name} declared twice")
            table[p.name] = p
    return table


PARAMS: dict[str, Param] = _collect(_core, _maps, _restrict, _dnsbl, _greylist, _policy, _content, _mta,
                                    _milter)
install_params(PARAMS)
