"""Parameters of filterd.dnsbl (postscreen's meanings, without the ``postscreen_`` prefix)."""

from __future__ import annotations

from filterd.config.types import Param, as_int, as_positive_int, as_time
from filterd.dnsbl.resolver import as_nameservers
from filterd.dnsbl.sites import as_dnsbl_sites

PARAMS: list[Param] = [
    Param("dns_nameservers", "", as_nameservers,
          "DNS servers for DNSBL lookups (ip, ip:port, [ipv6]:port); empty = /etc/resolv.conf"),
    Param("dnsbl_timeout", "10s", as_time("s"),
          "time limit of one DNSBL lookup; a list that does not answer counts as not listing "
          "(postscreen_dnsbl_timeout)"),
    Param("dnsbl_cache_max_ttl", "3600s", as_time("s"),
          "longest time a DNSBL answer is cached, whatever its DNS TTL"),
    Param("dnsbl_failure_ttl", "60s", as_time("s"),
          "how long a failed DNSBL lookup (timeout, SERVFAIL, REFUSED) counts as not listed "
          "without asking again, so that requests from one client do not each wait for "
          "dnsbl_timeout while a list is down; 0 = ask every time"),
    Param("dnsbl_cache_size", "10000", as_positive_int,
          "most DNSBL answers kept in the cache; the least recently used are dropped first"),
    Param("dnsbl_sites", "", as_dnsbl_sites,
          "DNS white/blacklists with optional reply filters and weights, "
          "postscreen_dnsbl_sites syntax: zone[=d.d.d.d|&d.d.d.d][*weight]"),
    Param("dnsbl_threshold", "1", as_int,
          "combined dnsbl_sites score at or above which check_dnsbl_score blocks a client "
          "(postscreen_dnsbl_threshold)"),
    Param("dnsbl_whitelist_threshold", "0", as_int,
          "a negative combined score at or below which a client is allowlisted; 0 = off "
          "(postscreen_dnsbl_whitelist_threshold)"),
]
