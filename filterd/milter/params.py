"""Parameters of the milter (Postfix ``smtpd_milters = inet:127.0.0.1:10026``)."""

from __future__ import annotations

from filterd.config.types import Param, as_bool, as_endpoint, as_list, as_positive_int, as_time


def as_mode(value: str) -> int:
    """A file mode in octal, as chmod takes it (``0660``)."""
    try:
        mode = int(value.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal file mode like 0660, got {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"file mode out of range: {value!r}")
    return mode


PARAMS = [
    Param("milter_listen", "inet:127.0.0.1:10026", as_endpoint,
          "where the milter listens (inet:host:port or unix:/path; empty = off); in Postfix's "
          "main.cf: smtpd_milters = inet:127.0.0.1:10026, milter_protocol = 6"),
    Param("milter_shutdown_grace", "10s", as_time("s"),
          "how long SIGTERM waits for the milter's messages in flight before closing its "
          "connections"),
    Param("milter_socket_mode", "0660", as_mode,
          "file mode of the milter's unix socket (Postfix's smtpd must be able to write to it)"),
    Param("milter_connect_restrictions", "", as_list,
          "restrictions when a client connects (the reply to SMFIC_CONNECT)"),
    Param("milter_helo_restrictions", "", as_list, "restrictions at HELO/EHLO"),
    Param("milter_mail_restrictions", "", as_list, "restrictions at MAIL FROM"),
    Param("milter_rcpt_restrictions", "check_greylist", as_list,
          "restrictions for each RCPT TO (a defer is a 4xx for that recipient)"),
    Param("milter_data_restrictions", "", as_list, "restrictions at DATA"),
    Param("milter_content_filter", "yes", as_bool,
          "run the content pipeline at the end of each message (no: the milter only runs "
          "the restriction lists, and asks Postfix not to send headers and body)"),
    Param("milter_timeout", "600s", as_time("s"),
          "how long a milter connection may stay silent (Postfix's smtpd keeps it open for "
          "the whole SMTP session, up to its smtpd_timeout between commands)"),
    Param("milter_max_connections", "500", as_positive_int,
          "most milter connections per worker process (Postfix opens one per smtpd process)"),
    Param("milter_frame_limit", "262144", as_positive_int,
          "longest milter packet accepted, in bytes (Postfix sends a whole header in one "
          "packet, up to its header_size_limit of 102400)"),
]
