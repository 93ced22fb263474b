"""Parameters of the policy service (Postfix check_policy_service target)."""

from __future__ import annotations

from filterd.config.types import Param, as_endpoint, as_list, as_positive_int, as_time


def _positive_time(value: str) -> float:
    seconds = as_time("s")(value)
    if seconds <= 0:
        raise ValueError(f"expected a time greater than zero, got {value!r}")
    return seconds


PARAMS = [
    Param("policy_listen", "inet:127.0.0.1:10023", as_endpoint,
          "where the policy service listens (inet:host:port or unix:/path; empty = off)"),
    Param("policy_restrictions", "check_greylist", as_list,
          "restrictions for protocol_state=RCPT requests"),
    Param("policy_connect_restrictions", "", as_list, "restrictions for CONNECT requests"),
    Param("policy_helo_restrictions", "", as_list, "restrictions for HELO/EHLO requests"),
    Param("policy_mail_restrictions", "", as_list, "restrictions for MAIL requests"),
    Param("policy_data_restrictions", "", as_list, "restrictions for DATA requests"),
    Param("policy_end_of_message_restrictions", "", as_list,
          "restrictions for END-OF-MESSAGE requests"),
    Param("policy_vrfy_restrictions", "", as_list, "restrictions for VRFY requests"),
    Param("policy_etrn_restrictions", "", as_list, "restrictions for ETRN requests"),
    Param("policy_shutdown_grace", "10s", as_time("s"),
          "how long SIGTERM waits for requests in flight before closing connections"),
    # Above Postfix's smtpd_policy_service_max_idle (300s): Postfix closes an idle
    # connection first, so it never sends a request into one being closed here.
    Param("policy_idle_timeout", "330s", _positive_time,
          "close a policy connection that sends nothing for this long (or whose client "
          "stops reading its answers); a little above Postfix's smtpd_policy_service_max_idle"),
    # Postfix's default_process_limit (100) bounds the connections of one Postfix host;
    # 500 leaves room for several, below the usual limit of 1024 open files.
    Param("policy_connection_limit", "500", as_positive_int,
          "most policy connections one worker process holds; one more is closed at once "
          "(Postfix then retries, or answers 451 4.3.5 and the mail is deferred)"),
]
