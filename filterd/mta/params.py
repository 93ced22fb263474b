"""Parameters of the gateway MTA's queue, queue manager, routing and bounces.

Names, meanings and defaults are Postfix's (``postconf -d`` of Postfix 3.7), so lines
pasted from a Postfix main.cf mean the same here. Per-transport overrides follow
Postfix's ``transport_name_parameter`` pattern; they are declared for the transports
filterd has (smtp, lmtp).
"""

from __future__ import annotations

from filterd.config.types import (
    Param, as_bool, as_choice, as_endpoints, as_float, as_list, as_nonneg_int, as_positive_int, as_size, as_str,
    as_time,
)

TRANSPORTS = ("smtp", "lmtp")
"""Transports with their own ``<transport>_destination_*`` parameters."""

PARAMS: list[Param] = [
    Param("queue_directory", "$data_directory/queue", as_str,
          "where the mail queue lives (incoming, active, deferred, hold, corrupt)"),
    Param("initial_destination_concurrency", "5", as_positive_int,
          "parallel deliveries to a destination at first; grows with successes"),
    Param("default_destination_concurrency_limit", "20", as_positive_int,
          "most parallel deliveries to one destination"),
    Param("default_destination_recipient_limit", "50", as_positive_int,
          "most recipients in one delivery"),
    Param("default_destination_concurrency_failed_cohort_limit", "1", as_nonneg_int,
          "failed pseudo-cohorts (as many failed sessions as the concurrency) after which "
          "a destination is declared dead for minimal_backoff_time; 0 = never"),
    Param("default_process_limit", "100", as_positive_int,
          "most deliveries in flight per transport"),
    Param("minimal_backoff_time", "300s", as_time("s"),
          "shortest time before a deferred message is tried again"),
    Param("maximal_backoff_time", "4000s", as_time("s"),
          "longest time before a deferred message is tried again"),
    Param("backoff_jitter", "0.2", as_float,
          "relative spread of each retry time (0.2 = within +-20%, kept inside the "
          "minimal/maximal backoff), so deferred mail does not retry in waves"),
    Param("queue_run_delay", "300s", as_time("s"),
          "how often the deferred queue is scanned for messages due for a retry"),
    Param("maximal_queue_lifetime", "5d", as_time("d"),
          "age after which a message that still cannot be delivered is returned"),
    Param("bounce_queue_lifetime", "5d", as_time("d"),
          "maximal_queue_lifetime for bounces (sender <>)"),
    Param("delay_warning_time", "0h", as_time("h"),
          "age at which the sender is told the message is delayed; 0 = never"),
    Param("defer_transports", "", as_list,
          "transports that deliver only when the queue is flushed"),
    Param("qmgr_message_active_limit", "20000", as_positive_int,
          "most messages in the active queue (in memory) at once"),
    Param("qmgr_message_recipient_limit", "20000", as_positive_int,
          "most recipients of active messages in memory at once"),
    Param("relayhost", "", as_str,
          "next hop for all mail not routed by transport_maps: domain, host, [host]:port; "
          "empty = the recipient domain's MX hosts"),
    Param("transport_maps", "", as_list,
          "tables mapping recipient, domain, .parent or * to transport:nexthop"),
    Param("default_transport", "smtp", as_str,
          "transport[:nexthop] for mail that transport_maps does not route"),
    Param("smtp_randomize_addresses", "yes", as_bool,
          "shuffle MX hosts of equal preference and a host's addresses"),
    Param("inet_protocols", "all", as_list,
          "address families for delivery: ipv4, ipv6, all"),
    # The SMTP and LMTP clients' own parameters are declared with the agents below
    # (CLIENT_PARAMS), one smtp_ and one lmtp_ name each, as Postfix has them.
    Param("bounce_size_limit", "50000", as_size,
          "largest original message returned whole in a bounce; larger ones return headers only"),
    Param("notify_classes", "resource, software", as_list,
          "what the postmaster is told about: bounce, 2bounce, delay, resource, software, ..."),
    Param("bounce_notice_recipient", "postmaster", as_str,
          "who gets the postmaster copy of a bounce (notify_classes bounce)"),
    Param("2bounce_notice_recipient", "postmaster", as_str,
          "who gets undeliverable bounces (notify_classes 2bounce)"),
    Param("delay_notice_recipient", "postmaster", as_str,
          "who gets the postmaster copy of a delay warning (notify_classes delay)"),
    Param("canonical_maps", "", as_list, "address mapping for senders and recipients, envelope and headers"),
    Param("sender_canonical_maps", "", as_list, "address mapping for senders, before canonical_maps"),
    Param("recipient_canonical_maps", "", as_list, "address mapping for recipients, before canonical_maps"),
    Param("canonical_classes", "envelope_sender, envelope_recipient, header_sender, header_recipient",
          as_list, "which addresses canonical mapping applies to"),
    Param("virtual_alias_maps", "", as_list, "aliases expanded recursively for every recipient"),
    Param("virtual_alias_recursion_limit", "1000", as_positive_int, "deepest virtual alias nesting"),
    Param("virtual_alias_expansion_limit", "1000", as_positive_int,
          "most addresses one recipient may expand to"),
    Param("relocated_maps", "", as_list, "recipients who moved: refused with 5.1.6 and their new contact"),
    Param("masquerade_domains", "", as_list,
          "domains that replace their subdomains in sender/header addresses (!domain: do not)"),
    Param("masquerade_exceptions", "", as_list, "local parts never masqueraded (e.g. root)"),
    Param("masquerade_classes", "envelope_sender, header_sender, header_recipient", as_list,
          "which addresses masquerading applies to"),
    Param("always_add_missing_headers", "no", as_bool,
          "add Message-Id, Date, From, To to mail from remote clients too, not only local ones"),
]

# -- smtpd: the gateway's SMTP server (filterd/mta/smtpd.py) ------------------------------
PARAMS += [
    Param("smtpd_listen", "", as_endpoints,
          "where the gateway's SMTP server listens: a list of inet:host:port or unix:/path "
          "(empty = off, the default: port 25 belongs to Postfix on most machines)"),
    Param("mail_name", "filterd", as_str, "the mail system's name in the greeting and Received headers"),
    Param("smtpd_banner", "$myhostname ESMTP $mail_name", as_str,
          "text after 220 in the greeting (start it with $myhostname, as RFC 5321 asks)"),
    Param("smtpd_content_filter", "yes", as_bool,
          "run the content pipeline at the end of each message, before the 250 (no: only "
          "the restriction lists and cleanup, with header_checks and body_checks when set; "
          "the MTA path alone)"),
    Param("smtpd_delay_reject", "yes", as_bool,
          "report client, helo and sender rejects at RCPT TO, as Postfix does (so the "
          "log names the recipient, and clients that ignore a MAIL reject are handled)"),
    Param("smtpd_recipient_limit", "1000", as_positive_int,
          "most recipients per message; the excess gets 452 4.5.3"),
    Param("smtpd_timeout", "300s", as_time("s"),
          "how long smtpd waits for the client: a command, each piece of a message"),
    Param("smtpd_error_sleep_time", "1s", as_time("s"),
          "pause before each reply once the client made smtpd_soft_error_limit errors"),
    Param("smtpd_soft_error_limit", "10", as_nonneg_int,
          "errors in a session after which each reply is delayed by smtpd_error_sleep_time"),
    Param("smtpd_hard_error_limit", "20", as_positive_int,
          "errors in a session after which the client is disconnected (421 4.7.0)"),
    Param("smtpd_client_connection_count_limit", "50", as_nonneg_int,
          "most simultaneous connections from one client address, per worker process "
          "(0 = no limit; mynetworks are exempt, as Postfix's smtpd_client_event_limit_exceptions)"),
    Param("smtpd_forbid_bare_newline", "normalize", as_choice("normalize", "yes", "no"),
          "what a bare LF (without CR) in DATA means: normalize = a line end, stored as CRLF; "
          "yes = 521 5.5.2 and disconnect; no = kept as received. Whatever the value, DATA "
          "ends only at CRLF.CRLF (SMTP smuggling)"),
    Param("smtpd_peername_lookup", "yes", as_bool,
          "look up the client's name (reverse, then forward-confirmed); no = always unknown"),
    Param("smtpd_shutdown_grace", "10s", as_time("s"),
          "how long SIGTERM waits for smtpd's messages in flight before closing its connections"),
]

for _t in TRANSPORTS:
    PARAMS += [
        Param(f"{_t}_destination_concurrency_limit", "$default_destination_concurrency_limit",
              as_positive_int, f"default_destination_concurrency_limit for the {_t} transport"),
        Param(f"{_t}_destination_recipient_limit", "$default_destination_recipient_limit",
              as_positive_int, f"default_destination_recipient_limit for the {_t} transport"),
        Param(f"{_t}_initial_destination_concurrency", "$initial_destination_concurrency",
              as_positive_int, f"initial_destination_concurrency for the {_t} transport"),
    ]

# -- the SMTP and LMTP delivery agents (Postfix smtp(8) and lmtp(8)) -------------------
TLS_LEVELS = ("none", "may", "encrypt")
"""What filterd's clients do with STARTTLS: never; when offered, unverified, falling
back to plain text when the handshake fails; always, unverified (deferred otherwise)."""


def _tls_level(value: str) -> str:
    """A TLS security level filterd's clients have ("" is Postfix's way to say none)."""
    level = value.strip().lower()
    if level not in ("", *TLS_LEVELS):
        raise ValueError(f"expected none, may or encrypt (levels that verify certificates are not "
                         f"supported yet), got {value!r}")
    return level


def _client_params(t: str, helo: str, tls_default: str, connect_default: str) -> list[Param]:
    """One transport's parameters: Postfix's names with its defaults, except where
    filterd must differ (said in the description)."""
    return [
        Param(f"{t}_connect_timeout", connect_default, as_time("s"),
              f"time limit for the {t} client to open a connection"
              + (" (Postfix: 0s, the kernel's limit; filterd always bounds it)" if t == "lmtp" else "")),
        Param(f"{t}_{helo}_timeout", "300s", as_time("s"),
              f"time limit for the server greeting and the {helo.upper()} reply"),
        Param(f"{t}_starttls_timeout", "300s", as_time("s"),
              "time limit for the STARTTLS reply and the TLS handshake"),
        Param(f"{t}_mail_timeout", "300s", as_time("s"), "time limit for the MAIL FROM reply"),
        Param(f"{t}_rcpt_timeout", "300s", as_time("s"), "time limit for each RCPT TO reply"),
        Param(f"{t}_data_init_timeout", "120s", as_time("s"), "time limit for the DATA reply"),
        Param(f"{t}_data_xfer_timeout", "180s", as_time("s"),
              "time limit for each write of the message body"),
        Param(f"{t}_data_done_timeout", "600s", as_time("s"),
              "time limit for the reply(ies) to the final dot"),
        Param(f"{t}_rset_timeout", "20s", as_time("s"),
              "time limit for the RSET that checks a cached connection before it is reused"),
        Param(f"{t}_quit_timeout", "300s", as_time("s"), "time limit for the QUIT reply"),
        Param(f"{t}_{helo}_name", "$myhostname", as_str, f"the name the {t} client sends in {helo.upper()}"),
        Param(f"{t}_tls_security_level", tls_default, _tls_level,
              "STARTTLS: none, may (when offered; certificates not verified; a failed "
              "handshake is retried in plain text) or encrypt (required, not verified)"
              + ("; Postfix's default is empty (none), filterd's is may" if t == "smtp" else "")),
        Param(f"{t}_mx_address_limit", "5", as_nonneg_int,
              "most addresses tried for one delivery (MX hosts' and a host's own); 0 = no limit"),
        Param(f"{t}_mx_session_limit", "2", as_nonneg_int,
              "most sessions (past the greeting and " + helo.upper()
              + ") for one delivery before the rest is deferred; 0 = no limit"),
        Param(f"{t}_skip_5xx_greeting", "yes", as_bool,
              "a server that greets with 5xx is skipped (next address, else deferred) "
              "instead of bouncing the mail"),
        Param(f"{t}_connection_cache_on_demand", "yes", as_bool,
              "keep a connection open after a delivery and reuse it for the next message "
              "to the same next hop (RSET first)"),
        Param(f"{t}_connection_cache_time_limit", "2s", as_time("s"),
              "how long an unused connection stays in the cache"),
        Param(f"{t}_connection_reuse_time_limit", "300s", as_time("s"),
              "no reuse of a connection older than this"),
    ]


CLIENT_PARAMS = (_client_params("smtp", "helo", "may", "30s")
                 + _client_params("lmtp", "lhlo", "", "30s"))
PARAMS += CLIENT_PARAMS
