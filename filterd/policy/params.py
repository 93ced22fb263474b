"""Parameters of the policy service (Postfix check_policy_service target)."""

from __future__ import annotations

from filterd.config.types import Param, as_endpoint, as_list, as_time

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
]
