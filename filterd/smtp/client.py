"""Reinjection: hand a message to the next hop (``filter_forward``) and report its replies.

The content filter answers Postfix only after the next hop has answered, so this module
never decides anything: it returns what the next hop said, per recipient, in the form
amavisd-new relays it (``250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok:
queued as 4756B13453``), and turns every way of failing to reach it (refused connection,
timeout, lost connection) into a temporary reply, so Postfix keeps the message queued.

SMTP is spoken by aiosmtplib. The original client is passed on with XFORWARD when the
next hop offers it (Postfix's 10025 smtpd needs ``smtpd_authorized_xforward_hosts``; a
refused XFORWARD is logged and the message still goes). MAIL and RCPT are written by
this module with the addresses as received (checked then: printable, UTF-8 only with
SMTPUTF8): aiosmtplib's own quoting reparses an address as a header would, and can
quietly change one (it drops control characters) or raise after the message was taken.
A UTF-8 address for a next hop that does not offer SMTPUTF8 is refused as Postfix's smtp
client refuses it (``5.6.7``), instead of failing with an internal error.

When the next hop refuses some recipients and accepts others, what happens depends on
what Postfix can be told (``partial``): over LMTP each recipient has its own reply, so
the message goes to the accepted ones. Over SMTP there is one reply for all, so, as
amavisd-new does, a permanent refusal is reported to the sender by a delivery status
notification (the ``before_data`` callback, which must succeed before DATA is sent) and
the accepted recipients get the message; a temporary refusal of any recipient sends
nothing and defers the whole message (nothing delivered twice, nothing lost).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib

from filterd.smtp.nexthop import NextHop
from filterd.smtp.xforward import encode_commands
from filterd.reply import REPLY_LINE_MAX, Reply, safe_reply

log = logging.getLogger("filterd.content")

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_DSN = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")


#: What ``before_data`` is given: the recipients the next hop refused permanently,
#: with its replies; it answers whether the message may go to the others.
BeforeData = Callable[[dict[str, Reply]], Awaitable[bool]]


@dataclass
class ForwardResult:
    """The next hop's answer: one reply per recipient, and the queue id it reported.

    ``notified`` are refused recipients already reported to the sender by a delivery
    status notification: they no longer decide the reply to Postfix.
    """

    replies: dict[str, Reply] = field(default_factory=dict)
    queued_as: str | None = None
    notified: set[str] = field(default_factory=set)

    @property
    def all_ok(self) -> bool:
        return bool(self.replies) and all(r.ok for r in self.replies.values())

    def summary(self) -> Reply:
        """One reply for all recipients (SMTP mode): success only if every one succeeded
        or was refused and reported to the sender already.

        Any temporary failure makes the summary temporary, so Postfix retries; only when
        every recipient was refused permanently is it permanent.
        """
        replies = [r for rcpt, r in self.replies.items() if rcpt not in self.notified]
        if not replies:
            replies = list(self.replies.values())
        failed = [r for r in replies if not r.ok]
        if not failed:
            return replies[0]
        temporary = [r for r in failed if r.temporary]
        return temporary[0] if temporary else failed[0]


def _relayed(hop: NextHop, code: int, message: str) -> Reply:
    """The next hop's reply as amavisd-new relays it: its code, its DSN, its text quoted
    (one line, made safe and cut to a reply line's length: it is the next hop's text)."""
    if code // 100 not in (2, 4, 5):  # not a final reply: count it a temporary failure
        return _failure(hop, f"unexpected reply code {code}")
    first, _, _ = message.partition(" ")
    dsn = first if _DSN.match(first) and first[0] == str(code)[0] else f"{str(code)[0]}.0.0"
    text = safe_reply(" ".join(message.split()))  # multi-line replies become one line
    return Reply(code, dsn, f"from MTA({hop}): {code} {text}"[:REPLY_LINE_MAX - 10])


def _failure(hop: NextHop, what: str) -> Reply:
    """A temporary failure to pass the message on; ``what`` may quote the next hop (a
    malformed reply), so it is made safe and short like any text from outside."""
    return Reply(451, "4.4.1", f"Error in processing, forwarding to {hop} FAILED: {safe_reply(what)[:200]}")


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
        before_data: BeforeData | None = None,
    ) -> ForwardResult:
        """Deliver ``data`` to the recipients; never raises for network or protocol trouble.

        With ``partial`` (LMTP mode, where Postfix gets one reply per recipient) the
        message goes to the recipients the next hop accepted, and each refused one keeps
        its refusal. Without it (SMTP mode, one reply for all): if any recipient is
        refused temporarily, no DATA is sent and the others get a temporary reply, so a
        retry can neither lose nor duplicate anyone's copy; if some are refused
        permanently, ``before_data`` is called with their replies and, if it returns
        True (it has told the sender), the others get the message and the refused ones
        count as ``notified``. Without ``before_data`` a permanent refusal of some
        recipients defers the whole message, as a temporary one does.
        """
        hop = hop or self.hop
        client = self._take(hop)
        if client is not None:
            result = ForwardResult()
            progress: list[str] = []
            try:
                await self._transaction(client, hop, sender, recipients, data, xforward,
                                        smtputf8, partial, before_data, result, progress)
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
                                    partial, before_data, result, [])
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
                           partial: bool, before_data: BeforeData | None,
                           result: ForwardResult, progress: list[str]) -> None:
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
        elif not all(address.isascii() for address in (sender, *recipients)):
            # What Postfix's smtp client does (and bounces): a UTF-8 address cannot be
            # written to a next hop that does not take SMTPUTF8.
            reply = Reply(554, "5.6.7", f"SMTPUTF8 is required, but was not offered by host {hop}")
            for rcpt in recipients:
                result.replies[rcpt] = reply
            return
        answer = await client.execute_command(
            b"MAIL", b"FROM:<" + sender.encode(encoding) + b">", *(o.encode("ascii") for o in options))
        if answer.code != 250:
            raise aiosmtplib.SMTPSenderRefused(answer.code, answer.message, sender)
        progress.append("MAIL")
        accepted: list[str] = []
        refused: dict[str, Reply] = {}
        for rcpt in recipients:
            answer = await client.execute_command(b"RCPT", b"TO:<" + rcpt.encode(encoding) + b">")
            if answer.code in (250, 251):
                accepted.append(rcpt)
            else:
                refused[rcpt] = result.replies[rcpt] = _relayed(hop, answer.code, answer.message)
        go = bool(accepted) and (partial or not refused)
        if accepted and not partial and refused and before_data is not None \
                and all(not r.temporary for r in refused.values()):
            go = await before_data(refused)
            if go:
                result.notified.update(refused)
        if not go:
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
