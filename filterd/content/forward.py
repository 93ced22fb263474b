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
import time
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


#: Idle connections kept per next hop, and how long one may stay idle. Postfix's smtpd
#: drops a silent client after smtpd_timeout (300 s); ten seconds stays well inside that.
POOL_SIZE = 8
POOL_IDLE = 10.0


class Forwarder:
    """Sends messages to one next hop, reusing connections as amavisd-new does.

    A connection that carried a completed transaction goes back to a small pool; the
    next message starts with MAIL (XFORWARD first, since Postfix resets XFORWARD
    attributes after each transaction). A pooled connection that turns out dead before
    any data was sent is replaced by a fresh one and the message tried once more, so
    reuse never turns into a 4xx the next hop did not ask for.
    """

    def __init__(self, hop: NextHop, timeout: float, helo_name: str):
        self.hop = hop
        self.timeout = timeout
        self.helo_name = helo_name
        self._idle: dict[NextHop, list[tuple[float, aiosmtplib.SMTP]]] = {}

    def _take(self, hop: NextHop) -> aiosmtplib.SMTP | None:
        pool = self._idle.get(hop, [])
        now = time.monotonic()
        while pool:
            since, client = pool.pop()
            if now - since < POOL_IDLE and client.is_connected:
                return client
            client.close()
        return None

    def _give_back(self, hop: NextHop, client: aiosmtplib.SMTP) -> None:
        pool = self._idle.setdefault(hop, [])
        if len(pool) < POOL_SIZE and client.is_connected:
            pool.append((time.monotonic(), client))
        else:
            client.close()

    async def close(self) -> None:
        """QUIT every pooled connection (at shutdown)."""
        for pool in self._idle.values():
            for _, client in pool:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
        self._idle.clear()

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
        client = self._take(hop)
        if client is not None:
            result = ForwardResult()
            progress: list[str] = []
            try:
                await self._transaction(client, hop, sender, recipients, data, xforward,
                                        smtputf8, partial, result, progress)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                client.close()
                if progress:  # the next hop saw the transaction: its outcome stands
                    self._fail(hop, recipients, result, exc)
                    return result
            else:
                self._give_back(hop, client)
                return result
        result = ForwardResult()
        client = aiosmtplib.SMTP(hostname=hop.host, port=hop.port, timeout=self.timeout,
                                 local_hostname=self.helo_name, start_tls=False)
        try:
            await client.connect()
            await client.ehlo()
            await self._transaction(client, hop, sender, recipients, data, xforward, smtputf8,
                                    partial, result, [])
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            self._fail(hop, recipients, result, exc)
        else:
            self._give_back(hop, client)
        return result

    @staticmethod
    def _fail(hop: NextHop, recipients: list[str], result: ForwardResult, exc: BaseException) -> None:
        """Every recipient without a reply of its own gets the failure (a 4xx unless the
        next hop itself answered 5xx)."""
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
            reply = _relayed(hop, exc.code, exc.message)
            for rcpt in recipients:
                if rcpt not in result.replies or result.replies[rcpt].ok:
                    result.replies[rcpt] = reply
        else:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            for rcpt in recipients:
                result.replies[rcpt] = _failure(hop, reason)
        result.queued_as = None

    async def _transaction(self, client: aiosmtplib.SMTP, hop: NextHop, sender: str,
                           recipients: list[str], data: bytes,
                           xforward: dict[str, str | None] | None, smtputf8: bool,
                           partial: bool, result: ForwardResult, progress: list[str]) -> None:
        """One transaction on a connection that has said EHLO. ``progress`` gets an entry
        once the next hop has accepted MAIL FROM: from then on a failure is the next
        hop's answer, not a dead pooled connection."""
        if xforward and client.supports_extension("xforward"):
            offered = client.esmtp_extensions.get("xforward", "")
            for args in encode_commands(xforward, offered):
                answer = await client.execute_command(b"XFORWARD", args.encode("ascii"))
                if answer.code != 250:
                    log.warning("%s refused XFORWARD: %d %s (check its smtpd_authorized_xforward_hosts)",
                                hop, answer.code, answer.message)
                    break
        options: list[str] = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if client.supports_extension("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if smtputf8 and client.supports_extension("smtputf8"):
            options.append("SMTPUTF8")
            encoding = "utf-8"
        await client.mail(sender, options=options, encoding=encoding)
        progress.append("MAIL")
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
