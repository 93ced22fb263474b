"""Reinjection: hand a message to the next hop (``filter_forward``) and report its replies.

The content filter answers Postfix only after the next hop has answered, so this module
never decides anything: it returns what the next hop said, per recipient, in the form
amavisd-new relays it (``250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok:
queued as 4756B13453``), and turns every way of failing to reach it (refused connection,
timeout, lost connection) into a temporary reply, so Postfix keeps the message queued.

SMTP is spoken by aiosmtplib. The original client is passed on with XFORWARD when the
next hop offers it (Postfix's 10025 smtpd needs ``smtpd_authorized_xforward_hosts``; a
refused XFORWARD is logged and the message still goes).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import aiosmtplib

from filterd.content.nexthop import NextHop
from filterd.content.verdict import Reply
from filterd.content.xforward import encode_commands

log = logging.getLogger("filterd.content")

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_DSN = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")


@dataclass
class ForwardResult:
    """The next hop's answer: one reply per recipient, and the queue id it reported."""

    replies: dict[str, Reply] = field(default_factory=dict)
    queued_as: str | None = None

    @property
    def all_ok(self) -> bool:
        return bool(self.replies) and all(r.ok for r in self.replies.values())

    def summary(self) -> Reply:
        """One reply for all recipients (SMTP mode): success only if every one succeeded.

        Any temporary failure makes the summary temporary, so Postfix retries; only when
        every recipient was refused permanently is it permanent.
        """
        replies = list(self.replies.values())
        failed = [r for r in replies if not r.ok]
        if not failed:
            return replies[0]
        temporary = [r for r in failed if r.temporary]
        return temporary[0] if temporary else failed[0]


def _relayed(hop: NextHop, code: int, message: str) -> Reply:
    """The next hop's reply as amavisd-new relays it: its code, its DSN, its text quoted."""
    first, _, _ = message.partition(" ")
    dsn = first if _DSN.match(first) and first[0] == str(code)[0] else f"{str(code)[0]}.0.0"
    text = " ".join(message.split())  # multi-line replies become one line
    return Reply(code, dsn, f"from MTA({hop}): {code} {text}")


def _failure(hop: NextHop, what: str) -> Reply:
    return Reply(451, "4.4.1", f"Error in processing, forwarding to {hop} FAILED: {what}")


class Forwarder:
    """Sends messages to one next hop; a fresh connection per message (no shared state)."""

    def __init__(self, hop: NextHop, timeout: float, helo_name: str):
        self.hop = hop
        self.timeout = timeout
        self.helo_name = helo_name

    async def send(
        self,
        sender: str,
        recipients: list[str],
        data: bytes,
        *,
        xforward: dict[str, str | None] | None = None,
        smtputf8: bool = False,
        hop: NextHop | None = None,
        partial: bool = False,
    ) -> ForwardResult:
        """Deliver ``data`` to the recipients; never raises for network or protocol trouble.

        With ``partial`` (LMTP mode, where Postfix gets one reply per recipient) the
        message goes to the recipients the next hop accepted, and each refused one keeps
        its refusal. Without it (SMTP mode, one reply for all) it is all or nothing: if
        any recipient is refused, no DATA is sent and the others get a temporary reply,
        so a retry can neither lose nor duplicate anyone's copy.
        """
        hop = hop or self.hop
        result = ForwardResult()
        client = aiosmtplib.SMTP(hostname=hop.host, port=hop.port, timeout=self.timeout,
                                 local_hostname=self.helo_name, start_tls=False)
        try:
            await client.connect()
            await self._transaction(client, hop, sender, recipients, data, xforward, smtputf8,
                                    partial, result)
        except aiosmtplib.SMTPResponseException as exc:
            reply = _relayed(hop, exc.code, exc.message) if exc.code >= 400 else _failure(hop, str(exc))
            for rcpt in recipients:
                if rcpt not in result.replies or result.replies[rcpt].ok:
                    result.replies[rcpt] = reply
            result.queued_as = None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            for rcpt in recipients:
                result.replies[rcpt] = _failure(hop, reason)
            result.queued_as = None
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
        return result

    async def _transaction(self, client: aiosmtplib.SMTP, hop: NextHop, sender: str,
                           recipients: list[str], data: bytes,
                           xforward: dict[str, str | None] | None, smtputf8: bool,
                           partial: bool, result: ForwardResult) -> None:
        await client.ehlo()
        if xforward and client.supports_extension("xforward"):
            offered = client.esmtp_extensions.get("xforward", "")
            for args in encode_commands(xforward, offered):
                reply = await client.execute_command(b"XFORWARD", args.encode("ascii"))
                if reply.code != 250:
                    log.warning("%s refused XFORWARD: %d %s (check its smtpd_authorized_xforward_hosts)",
                                hop, reply.code, reply.message)
                    break
        options: list[str] = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if client.supports_extension("8bitmime") and any(b > 0x7F for b in data):
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if smtputf8 and client.supports_extension("smtputf8"):
            options.append("SMTPUTF8")
            encoding = "utf-8"
        await client.mail(sender, options=options, encoding=encoding)
        accepted: list[str] = []
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                result.replies[rcpt] = _relayed(hop, exc.code, exc.message)
                continue
            accepted.append(rcpt)
        if not accepted or (not partial and len(accepted) < len(recipients)):
            await client.rset()
            for rcpt in accepted:
                result.replies[rcpt] = Reply(451, "4.5.0", "Error in processing, not forwarded: "
                                             "the next hop refused other recipients of this message")
            return
        response = await client.data(data)
        reply = _relayed(hop, response.code, response.message)
        m = _QUEUED_AS.search(response.message)
        result.queued_as = m.group(1) if m else None
        for rcpt in accepted:
            result.replies[rcpt] = reply
