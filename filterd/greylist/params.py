"""Parameters of filterd.greylist, named after postgrey's options and defaulting to its values.

postgrey option -> parameter: --delay -> greylist_delay, --max-age -> greylist_max_age,
--retry-window -> greylist_retry_window, --auto-whitelist-clients ->
greylist_auto_whitelist_clients, --lookup-by-subnet/--lookup-by-host ->
greylist_lookup_by_subnet, --ipv4cidr/--ipv6cidr -> greylist_ipv4_netmask/_ipv6_netmask,
--whitelist-clients/--whitelist-recipients -> greylist_whitelist_clients/_recipients,
--greylist-text -> greylist_text.
"""

from __future__ import annotations

from importlib import resources

from filterd.config.types import (
    Converter,
    Param,
    as_bool,
    as_int,
    as_list,
    as_nonneg_int,
    as_str,
    as_time,
)


def _shipped(name: str) -> str:
    """Absolute path of a file shipped in filterd/defaults (same in a checkout and installed)."""
    return str(resources.files("filterd").joinpath("defaults", name))


def _netmask(bits: int) -> Converter:
    def convert(value: str) -> int:
        n = as_int(value)
        if not 0 <= n <= bits:
            raise ValueError(f"expected a prefix length from 0 to {bits}, got {value!r}")
        return n

    return convert


def _positive_time(value: str) -> float:
    seconds = as_time("s")(value)
    if seconds <= 0:
        raise ValueError(f"expected a time greater than zero, got {value!r}")
    return seconds


def _store_kind(value: str) -> str:
    """Only SQLite exists today; 'redis' is named so that its refusal says why."""
    v = value.strip().lower()
    if v == "sqlite":
        return v
    if v == "redis":
        raise ValueError("'redis' is reserved for the shared Redis store, which this "
                         "version of filterd does not have yet; use sqlite")
    raise ValueError(f"expected sqlite, got {value!r}")


PARAMS: list[Param] = [
    Param("greylist_delay", "300s", as_time("s"),
          "how long a new (client network, sender, recipient) triplet is deferred "
          "(postgrey --delay)"),
    Param("greylist_max_age", "35d", _positive_time,
          "a triplet or auto-whitelisted client not seen for this long is forgotten "
          "(postgrey --max-age)"),
    Param("greylist_retry_window", "2d", _positive_time,
          "a deferred triplet must be retried within this time, or it starts over "
          "(postgrey --retry-window)"),
    Param("greylist_auto_whitelist_clients", "5", as_nonneg_int,
          "whitelist a client address after this many greylisting passes, counted at most "
          "once per hour; 0 turns auto-whitelisting off (postgrey --auto-whitelist-clients)"),
    Param("greylist_lookup_by_subnet", "yes", as_bool,
          "key triplets by the client's network (see the netmasks) instead of its full "
          "address (postgrey --lookup-by-subnet / --lookup-by-host)"),
    Param("greylist_ipv4_netmask", "24", _netmask(32),
          "prefix length of an IPv4 client's network in triplets (postgrey --ipv4cidr)"),
    Param("greylist_ipv6_netmask", "64", _netmask(128),
          "prefix length of an IPv6 client's network in triplets (postgrey --ipv6cidr)"),
    Param("greylist_whitelist_clients", _shipped("greylist_whitelist_clients"), as_list,
          "files of clients never greylisted, in postgrey's whitelist_clients format"),
    Param("greylist_whitelist_recipients", _shipped("greylist_whitelist_recipients"), as_list,
          "files of recipients never greylisted, in postgrey's whitelist_recipients format"),
    Param("greylist_text", "Greylisted, see http://postgrey.schweikert.ch/help/%r.html", as_str,
          "deferral text; %s is replaced by the seconds left, %r by the recipient domain "
          "(postgrey --greylist-text)"),
    Param("greylist_header", "yes", as_bool,
          "prepend X-Greylist: delayed N seconds ... to a message the first time its "
          "triplet passes"),
    Param("greylist_store", "sqlite", _store_kind,
          "where greylisting state lives: sqlite ($data_directory/greylist.db)"),
]
