"""Address rewriting as cleanup(8) does it: canonical, virtual aliases, relocated, masquerading.

Pure functions over addresses and table lookups (``LookupTable.lookup``; a
MapTempError from a table propagates, and the caller defers the message):

- :func:`canonical` -- canonical(5): ``user@domain``, ``user`` (only for the local
  domains), ``@domain``; an ``@otherdomain`` result keeps the local part. With a
  ``recipient_delimiter``, ``user+ext@domain`` is looked up first, then ``user@domain``
  with the extension put back on the result (propagate_unmatched_extensions).
- :func:`expand_virtual` -- virtual(5) aliases, recursively: each result is looked up
  again; an alias that expands to itself keeps that address; duplicates are dropped;
  more than ``virtual_alias_recursion_limit`` levels or ``virtual_alias_expansion_limit``
  addresses is an error (:class:`AliasLimitError`), as in Postfix.
- :func:`relocated` -- relocated(5): where a recipient has moved.
- :func:`masquerade` -- masquerade_domains (``!domain`` exceptions, first match wins)
  and masquerade_exceptions.
- :func:`rewrite_header_addresses` -- applies one of them to the addresses in a header
  value, leaving quoted strings, comments and everything else as they were.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from filterd.config.types import split_list

Lookup = Callable[[str], "str | None"]


class AliasLimitError(Exception):
    """Virtual alias expansion went too deep or too wide; the text is Postfix's."""


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain); the domain is "" when there is no ``@``."""
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def _find(tables: Sequence[Lookup], key: str) -> str | None:
    for lookup in tables:
        value = lookup(key)
        if value is not None:
            return value
    return None


def _search(address: str, tables: Sequence[Lookup], delimiter: str,
            local_domains: Iterable[str]) -> tuple[str, str] | None:
    """(value, unmatched extension) of the first key that answers, in canonical(5) order."""
    local, domain = split_address(address)
    base, ext = local, ""
    cuts = [i for i in (local.find(d, 1) for d in delimiter) if i > 0]
    if cuts:
        base, ext = local[:min(cuts)], local[min(cuts):]
    is_local = domain.lower() in {d.lower() for d in local_domains}
    keys: list[tuple[str, str]] = [(address, "")]
    if ext:
        keys.append((f"{base}@{domain}" if domain else base, ext))
    if is_local or not domain:
        keys.append((local, ""))
        if ext:
            keys.append((base, ext))
    if domain:
        keys.append((f"@{domain}", ""))
    for key, unmatched in keys:
        value = _find(tables, key)
        if value is not None:
            return value, unmatched
    return None


def _with_extension(address: str, ext: str) -> str:
    if not ext:
        return address
    local, domain = split_address(address)
    return f"{local}{ext}@{domain}" if domain else f"{local}{ext}"


def canonical(address: str, tables: Sequence[Lookup], delimiter: str = "",
              local_domains: Iterable[str] = ()) -> str:
    """The canonical form of one address (unchanged when no table answers)."""
    if not address or not tables:
        return address
    found = _search(address, tables, delimiter, local_domains)
    if found is None:
        return address
    value, ext = found
    value = value.strip()
    if value.startswith("@"):
        return f"{split_address(address)[0]}{value}"
    return _with_extension(value, ext)


def expand_virtual(address: str, tables: Sequence[Lookup], delimiter: str = "",
                   local_domains: Iterable[str] = (), recursion_limit: int = 1000,
                   expansion_limit: int = 1000) -> list[str]:
    """The addresses ``address`` stands for after virtual alias expansion."""
    if not tables:
        return [address]
    domains = tuple(local_domains)
    out: list[str] = []
    seen: set[str] = set()

    def add(addr: str) -> None:
        key = addr.lower()
        if key not in seen:
            seen.add(key)
            out.append(addr)
            if len(out) > expansion_limit:
                raise AliasLimitError(f"virtual alias expansion limit {expansion_limit} exceeded "
                                      f"for {address}")

    def expand(addr: str, depth: int, parents: frozenset[str]) -> None:
        if depth > recursion_limit:
            raise AliasLimitError(f"virtual alias recursion limit {recursion_limit} exceeded for {address}")
        found = _search(addr, tables, delimiter, domains)
        if found is None:
            add(addr)
            return
        value, ext = found
        for target in split_list(value):
            target = _with_extension(target, ext)
            if target.lower() == addr.lower() or target.lower() in parents:
                add(target)  # an alias of itself (or a loop back): deliver to it as is
            else:
                expand(target, depth + 1, parents | {addr.lower()})

    expand(address, 1, frozenset())
    return out


def relocated(address: str, tables: Sequence[Lookup], local_domains: Iterable[str] = ()) -> str | None:
    """The new contact information of a recipient who moved, or None."""
    if not tables:
        return None
    found = _search(address, tables, "", local_domains)
    return found[0].strip() if found else None


def masquerade(address: str, domains: Sequence[str], exceptions: Iterable[str] = ()) -> str:
    """``user@host.example.com`` -> ``user@example.com`` when ``example.com`` is listed;
    ``!sub.example.com`` listed first keeps that subdomain's addresses as they are."""
    local, domain = split_address(address)
    if not domain or not domains or local.lower() in {e.lower() for e in exceptions}:
        return address
    low = domain.lower()
    for entry in domains:
        keep = entry.startswith("!")
        name = entry.lstrip("!").lower().rstrip(".")
        if low == name:
            return address
        if low.endswith("." + name):
            return address if keep else f"{local}@{name}"
    return address


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\((?:[^()\\]|\\.)*\)|<([^<>\s]+@[^<>\s]+)>|([^\s<>",;:()@]+@[^\s<>",;()]+)')


def rewrite_header_addresses(value: str, rewrite: Callable[[str], str]) -> str:
    """Rewrite each address in a header value (``<addr>`` or a bare ``user@domain``);
    display names, quoted strings and comments stay byte for byte."""
    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return f"<{rewrite(m.group(1))}>"
        if m.group(2):
            return rewrite(m.group(2))
        return m.group(0)
    return _TOKENS.sub(repl, value)
