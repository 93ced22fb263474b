"""The neutral description of an SMTP transaction that every restriction looks at.

The policy service builds one from a Postfix policy request, the content filter from
XFORWARD and the envelope, the milter from its macros, the gateway smtpd from its own
session. The restriction engine sees only this, never a protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Stage(str, Enum):
    """SMTP protocol stages, named as Postfix's ``protocol_state`` attribute."""

    CONNECT = "CONNECT"
    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_MESSAGE = "END-OF-MESSAGE"
    VRFY = "VRFY"
    ETRN = "ETRN"

    @classmethod
    def parse(cls, value: str) -> "Stage":
        try:
            return cls(value.strip().upper())
        except ValueError:
            raise ValueError(f"unknown protocol_state {value!r}") from None


@dataclass
class Transaction:
    """What is known of one SMTP transaction at one stage.

    Field names follow Postfix's policy delegation attributes so administrators
    recognise them in logs and ``filterd`` traces. ``client_name`` is ``unknown`` when
    the client's forward-confirmed name could not be established (Postfix semantics);
    ``reverse_client_name`` is the unverified PTR name (``unknown`` if none).
    """

    stage: Stage = Stage.RCPT
    client_address: str = ""
    client_name: str = "unknown"
    reverse_client_name: str = "unknown"
    client_port: str = ""
    helo_name: str = ""
    protocol_name: str = "SMTP"
    sender: str | None = None
    recipient: str | None = None
    recipient_count: int = 0
    queue_id: str = ""
    instance: str = ""
    size: int = 0
    sasl_method: str = ""
    sasl_username: str = ""
    sasl_sender: str = ""
    server_address: str = ""
    server_port: str = ""
    encryption_protocol: str = ""
    encryption_cipher: str = ""
    encryption_keysize: int = 0
    ccert_subject: str = ""
    ccert_issuer: str = ""
    ccert_fingerprint: str = ""
    ccert_pubkey_fingerprint: str = ""
    etrn_domain: str = ""
    stress: str = ""
    policy_context: str = ""
    #: The client sent commands ahead of time where that is not allowed (before the
    #: greeting, after a command that must end a group, or with no PIPELINING offered):
    #: what ``reject_unauth_pipelining`` refuses. Only an SMTP server can see it.
    unauth_pipelining: bool = False
    #: Every recipient accepted so far (at END-OF-MESSAGE: all of them), for the content
    #: pipeline and the after-verdict work; ``recipient`` is the one at hand at RCPT.
    recipients: list[str] = field(default_factory=list)
    #: Attributes the front end received but filterd has no field for; passed on
    #: unchanged to chained policy services.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def client_label(self) -> str:
        """``name[address]`` as Postfix writes the client in log lines and replies."""
        return f"{self.client_name or 'unknown'}[{self.client_address}]"
