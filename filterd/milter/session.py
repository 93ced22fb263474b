"""One milter connection's state, without I/O: commands in, reply packets out.

The session follows the MTA through a connection: negotiation, the client (CONNECT,
HELO), then any number of messages (MAIL, RCPT..., DATA, headers, body, end of
message), each ended by the end of message or by ABORT; QUIT ends the connection and
QUIT_NC starts a new client on the same connection (Postfix reuses a milter
connection only that way). It keeps the macros (the MTA sends only the ones that
changed, so values carry over; the queue id ``i`` is forgotten at the end of each
message, a new message gets a new one), builds the :class:`Transaction` the
restriction engine sees, and collects the message for the content pipeline.

Decisions are the handler's (:class:`MilterHandler`): the session asks it at each step
it negotiated an answer for, and turns what it says into packets.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Protocol

from filterd.milter import protocol as p
from filterd.milter.protocol import ProtocolError
from filterd.restrict.decision import DEFER, REJECT, Decision
from filterd.restrict.transaction import Stage, Transaction

#: The restriction stage of each envelope command.
_STAGE_OF = {p.SMFIC_CONNECT: Stage.CONNECT, p.SMFIC_HELO: Stage.HELO, p.SMFIC_MAIL: Stage.MAIL,
             p.SMFIC_RCPT: Stage.RCPT, p.SMFIC_DATA: Stage.DATA}
_instances = itertools.count(1)
#: Most distinct macro names kept per connection (Postfix's defaults send about 20).
MAX_MACROS = 256


class Close:
    """Returned by :meth:`MilterSession.handle` when the MTA said QUIT."""


CLOSE = Close()


@dataclass
class MilterMessage:
    """One message as the MTA passed it: envelope, accepted recipients, content."""

    sender: str = ""
    mail_args: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0  # bytes received, kept or not
    instance: str = ""
    #: Restriction decisions whose side effects (HOLD, DISCARD, PREPEND, REDIRECT, BCC,
    #: FILTER) wait for the end of the message, as Postfix's smtpd keeps them.
    effects: list[Decision] = field(default_factory=list)

    def raw(self, leading_space: bool) -> bytes:
        """The message as bytes: header lines (CRLF), an empty line, the body.

        With SMFIP_HDR_LEADSPC the value carries its own leading white space; without
        it the MTA removed one space, which is put back.
        """
        sep = b":" if leading_space else b": "
        lines = [name + sep + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                 for name, value in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(self.body)


@dataclass
class Client:
    """What is known of the SMTP client for the whole connection."""

    hostname: str = "unknown"
    address: str = ""
    port: int = 0
    family: str = "U"
    helo: str = ""


class MilterHandler(Protocol):
    """What decides: the restriction engine and the content pipeline, behind one face."""

    def wants(self) -> p.Wants:
        """The steps to receive and answer, and the actions to ask for."""
        ...

    async def check(self, stage: Stage, txn: Transaction) -> Decision:
        """Run the restriction list for ``stage``."""
        ...

    async def end_of_message(self, session: "MilterSession", message: MilterMessage) -> list[bytes]:
        """The packets that end the message: actions, then the final reply."""
        ...


class MilterSession:
    """The protocol state of one connection. ``await handle(cmd)`` for each command, in
    order; it returns the packets to write (none for reply-less steps) or CLOSE."""

    def __init__(self, handler: MilterHandler, peer: str, size_limit: int = 0):
        self.handler = handler
        self.peer = peer
        self.size_limit = size_limit
        self.agreement: p.Agreement | None = None
        self.macros: dict[str, str] = {}
        self.client = Client()
        self.message: MilterMessage | None = None
        #: CONNECT/HELO decisions with side effects: Postfix's smtpd applies those to
        #: every message of the client.
        self.client_effects: list[Decision] = []
        self._conn_id = f"{os.getpid():x}.{next(_instances):x}"
        self._messages = 0

    # -- what the handler reads ---------------------------------------------------------
    @property
    def queue_id(self) -> str:
        return self.macros.get("i", "")

    @property
    def leading_space(self) -> bool:
        return self.agreement is not None and bool(self.agreement.protocol & p.SMFIP_HDR_LEADSPC)

    def may(self, action: int) -> bool:
        return self.agreement is not None and self.agreement.may(action)

    def transaction(self, stage: Stage, recipient: str | None = None) -> Transaction:
        """The restriction engine's view of this connection at ``stage``."""
        m = self.macros
        msg = self.message
        client = self.client
        name = client.hostname
        if not name or name.startswith("["):
            name = "unknown"  # Postfix and Sendmail write an unnamed client as [address]
        keysize = m.get("{cipher_bits}", "")
        txn = Transaction(
            stage=stage,
            client_address=client.address,
            client_name=name,
            reverse_client_name=m.get("{client_ptr}") or name,
            client_port=str(client.port) if client.port else "",
            helo_name=client.helo,
            protocol_name=m.get("r") or "ESMTP",
            sender=msg.sender if msg is not None else None,
            recipient=recipient,
            recipient_count=len(msg.recipients) if msg is not None else 0,
            queue_id=self.queue_id,
            instance=msg.instance if msg is not None else "",
            size=_size_arg(msg.mail_args) if msg is not None else 0,
            sasl_method=m.get("{auth_type}", ""),
            sasl_username=m.get("{auth_authen}", ""),
            sasl_sender=m.get("{auth_author}", ""),
            server_address=m.get("{daemon_addr}", ""),
            server_port=m.get("{daemon_port}", ""),
            encryption_protocol=m.get("{tls_version}", ""),
            encryption_cipher=m.get("{cipher}", ""),
            encryption_keysize=int(keysize) if keysize.isdigit() else 0,
            ccert_subject=m.get("{cert_subject}", ""),
            ccert_issuer=m.get("{cert_issuer}", ""),
        )
        return txn

    # -- commands -----------------------------------------------------------------------
    async def handle(self, cmd: p.Command) -> list[bytes] | Close:
        """Advance the state by ``cmd``; raises ProtocolError for a command out of place."""
        if isinstance(cmd, p.OptNeg):
            self.agreement, reply = p.negotiate(cmd, self.handler.wants())
            return [reply]
        agreement = self.agreement
        if agreement is None:
            raise ProtocolError(f"{type(cmd).__name__} command before option negotiation")
        if isinstance(cmd, p.Macros):
            self.macros.update(cmd.values)
            if len(self.macros) > MAX_MACROS:
                raise ProtocolError(f"more than {MAX_MACROS} distinct macros")
            return []
        if isinstance(cmd, (p.Header, p.Body)):
            msg = self._in_message(cmd)
            if isinstance(cmd, p.Header):
                msg.size += len(cmd.name) + len(cmd.value) + 3
                if not self.oversized(msg):
                    msg.headers.append((cmd.name, cmd.value))
                return [] if not agreement.replies(p.SMFIC_HEADER) else [p.CONTINUE]
            self._add_body(msg, cmd.chunk)
            return [] if not agreement.replies(p.SMFIC_BODY) else [p.CONTINUE]
        if isinstance(cmd, p.Rcpt):
            return await self._rcpt(cmd)
        if isinstance(cmd, p.EndOfMessage):
            msg = self._in_message(cmd)
            self._add_body(msg, cmd.chunk)
            try:
                return await self.handler.end_of_message(self, msg)
            finally:
                self._end_message()
        if isinstance(cmd, p.Mail):
            self._messages += 1
            self.message = MilterMessage(sender=_address(cmd.args[0]), mail_args=cmd.args[1:],
                                         instance=f"{self._conn_id}.{self._messages:x}")
            return await self._step(p.SMFIC_MAIL)
        if isinstance(cmd, p.Connect):
            self._new_client()
            self.client = Client(cmd.hostname or "unknown", cmd.address, cmd.port, cmd.family)
            return await self._step(p.SMFIC_CONNECT)
        if isinstance(cmd, p.Helo):
            self.client.helo = cmd.name
            return await self._step(p.SMFIC_HELO)
        if isinstance(cmd, p.Unknown):
            return [] if not agreement.replies(p.SMFIC_UNKNOWN) else [p.CONTINUE]
        code = cmd.code  # a Simple command
        if code == p.SMFIC_DATA:
            self._in_message(cmd)
            return await self._step(p.SMFIC_DATA)
        if code == p.SMFIC_EOH:
            return [] if not agreement.replies(p.SMFIC_EOH) else [p.CONTINUE]
        if code == p.SMFIC_ABORT:
            self._end_message()
            return []
        if code == p.SMFIC_QUIT_NC:
            self._new_client()
            return []
        return CLOSE  # SMFIC_QUIT

    def _in_message(self, cmd: p.Command) -> MilterMessage:
        if self.message is None:
            what = p.command_name(cmd.code) if isinstance(cmd, p.Simple) else type(cmd).__name__
            raise ProtocolError(f"{what} command outside a message (no SMFIC_MAIL before it)")
        return self.message

    def _add_body(self, msg: MilterMessage, chunk: bytes) -> None:
        """Keep body bytes up to the size limit; the size is counted beyond it, so the
        end of the message can refuse an oversized one without holding it."""
        msg.size += len(chunk)
        if not self.size_limit or msg.size <= self.size_limit:
            msg.body += chunk

    def oversized(self, msg: MilterMessage) -> bool:
        return bool(self.size_limit) and msg.size > self.size_limit

    def _end_message(self) -> None:
        self.message = None
        self.macros.pop("i", None)

    def _new_client(self) -> None:
        """A new SMTP client (CONNECT, QUIT_NC): nothing of the previous one remains."""
        self._end_message()
        self.macros = {}
        self.client = Client()
        self.client_effects = []

    async def _step(self, code: bytes) -> list[bytes]:
        """An envelope step: run its restrictions if it is answered, else nothing."""
        assert self.agreement is not None
        if not self.agreement.replies(code):
            return []
        if code not in self.handler.wants().answers:
            return [p.CONTINUE]
        decision = await self.handler.check(_STAGE_OF[code], self.transaction(_STAGE_OF[code]))
        return self._answer(decision)

    async def _rcpt(self, cmd: p.Rcpt) -> list[bytes]:
        msg = self._in_message(cmd)
        assert self.agreement is not None
        recipient = _address(cmd.args[0])
        if not self.agreement.replies(p.SMFIC_RCPT):
            msg.recipients.append(recipient)
            return []
        reply = [p.CONTINUE]
        if p.SMFIC_RCPT in self.handler.wants().answers:
            decision = await self.handler.check(Stage.RCPT, self.transaction(Stage.RCPT, recipient))
            reply = self._answer(decision)
        if reply == [p.CONTINUE]:  # refused recipients are not in the envelope
            msg.recipients.append(recipient)
        return reply

    def _answer(self, decision: Decision) -> list[bytes]:
        """REPLYCODE for a reject or defer; otherwise continue, keeping side effects."""
        if decision.result in (REJECT, DEFER) and decision.reply is not None:
            return [p.encode_reply(decision.reply)]
        if _has_effects(decision):
            if self.message is not None:
                self.message.effects.append(decision)
            else:
                self.client_effects.append(decision)
        return [p.CONTINUE]

    def effects(self, msg: MilterMessage) -> list[Decision]:
        """Side effects for ``msg``: the client's (CONNECT/HELO), then the message's own."""
        return self.client_effects + msg.effects


def _has_effects(d: Decision) -> bool:
    return bool(d.hold is not None or d.discard is not None or d.prepend or d.redirect
                or d.bcc or d.filter)


def _address(arg: str) -> str:
    """``<a@b>`` -> ``a@b``; the null sender ``<>`` -> ``""``."""
    arg = arg.strip()
    if arg.startswith("<") and arg.endswith(">"):
        arg = arg[1:-1]
    return arg


def _size_arg(args: list[str]) -> int:
    for arg in args:
        if arg[:5].upper() == "SIZE=" and arg[5:].isdigit():
            return int(arg[5:])
    return 0
