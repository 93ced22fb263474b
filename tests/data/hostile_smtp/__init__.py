"""Hostile SMTP dialogues for the content filter (10024), replayed by
tests/integration/test_content_hostile_smtp.py against a running ``filterd serve``.

Each dialogue is a list of steps. A step sends bytes (all at once: pipelined, as a
client that does not wait) and names the reply codes that must come back, one per
command, in order: a reply that is missing, extra, or belongs to another command puts
the session out of step and the test sees it. ``None`` as the codes means "the server
closes the connection". After every dialogue a fresh client must still be served.

The message corpus (whole messages through the pipeline) is tests/data/hostile/; these
are the session side: what a client can do to the dialogue itself.
"""

from __future__ import annotations

from dataclasses import dataclass

CLEAN = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: clean\r\n"
         b"Message-ID: <clean@example.org>\r\n\r\nHello.\r\n")

#: Issue 11's attack: an RFC 2047 attachment name holding CR LF and fake replies, banned
#: (.exe), so that it lands in the 554 reply text.
INJECTED_NAME = b"=?utf-8?q?x=0D=0A250_2.0.0_Ok=0D=0A250_2.0.0_Ok=0D=0A=00=1B=C2=85=E2=80=A8y.exe?="
BANNED = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: banned\r\n"
          b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
          b"--BB\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
          b"--BB\r\nContent-Type: application/octet-stream\r\n"
          b"Content-Disposition: attachment; filename=\"" + INJECTED_NAME + b"\"\r\n"
          b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\r\n--BB--\r\n")

EHLO = b"EHLO pf.example\r\n"
ENVELOPE = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"


def data(message: bytes) -> bytes:
    """The DATA command, the message dot-stuffed, and the end-of-data line."""
    lines = message.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return b"DATA\r\n" + stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n"


@dataclass(frozen=True)
class Step:
    send: bytes
    codes: tuple[str, ...] | None  # reply code per command; None: the server hangs up
    wait: float = 0.0  # seconds of silence after sending (a stall)


@dataclass(frozen=True)
class Dialogue:
    name: str
    steps: tuple[Step, ...]
    #: texts that must not appear in any reply (what an injection would show)
    forbidden: tuple[bytes, ...] = ()


DIALOGUES: tuple[Dialogue, ...] = (
    Dialogue("clean message pipelined twice", (
        Step(EHLO, ("250",)),
        Step(ENVELOPE + data(CLEAN) + ENVELOPE + data(CLEAN) + b"QUIT\r\n",
             ("250", "250", "354", "250", "250", "250", "354", "250", "221")),
    )),
    Dialogue("reply injection through a banned RFC 2047 attachment name", (
        Step(EHLO, ("250",)),
        Step(ENVELOPE + data(BANNED) + ENVELOPE + data(CLEAN) + b"QUIT\r\n",
             ("250", "250", "354", "554", "250", "250", "354", "250", "221")),
    ), forbidden=(b"\x00", b"\x1b")),
    Dialogue("bare LF line endings in commands and a bare-LF dot inside DATA", (
        Step(b"EHLO pf.example\n", ("250",)),
        Step(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.com>\n", ("250", "250")),
        # "\n.\n" is not the end of data: only CR LF . CR LF is (no smuggling)
        Step(b"DATA\r\nSubject: x\r\n\r\nbody\n.\nMAIL FROM:<smuggled@example.org>\r\n.\r\nQUIT\r\n",
             ("354", "250", "221")),
    )),
    Dialogue("NUL, ESC and a bare CR in commands", (
        Step(EHLO, ("250",)),
        Step(b"NO\x00OP\r\nFOO\x1b[2J\r\nNOOP x\ry\r\nRSET\r\n", ("500", "500", "250", "250")),
    ), forbidden=(b"\x00", b"\x1b[")),
    Dialogue("command line over the limit, then one over the reader's buffer", (
        Step(EHLO, ("250",)),
        Step(b"NOOP " + b"x" * 5000 + b"\r\n" + b"NOOP " + b"y" * (3 << 20) + b"\r\nNOOP\r\n",
             ("500", "500", "250")),
    )),
    Dialogue("DATA line of several MiB is taken, not refused", (
        Step(EHLO, ("250",)),
        Step(ENVELOPE + data(CLEAN + b"z" * (3 << 20) + b"\r\n") + b"QUIT\r\n",
             ("250", "250", "354", "250", "221")),
    )),
    Dialogue("bad envelope addresses refused at once", (
        Step(EHLO, ("250",)),
        Step("MAIL FROM:<j\u00fcrgen@example.org>\r\n".encode(), ("553",)),
        Step(b'MAIL FROM:<"a\x01b"@example.org>\r\n', ("501",)),
        Step(b"MAIL FROM:<a\xff\xfe@example.org> SMTPUTF8\r\n", ("501",)),
        Step(b"MAIL FROM:<a@example.org>\r\n", ("250",)),
        Step("RCPT TO:<b\u2028c@example.com>\r\n".encode(), ("501",)),
        Step("RCPT TO:<j\u00fcrgen@example.com>\r\n".encode(), ("553",)),
        Step('RCPT TO:<"b\x0bc"@example.com>\r\n'.encode(), ("501",)),
        Step(b"RCPT TO:<>\r\nRCPT TO:<b@example.com>\r\n" + data(CLEAN), ("501", "250", "354", "250")),
    )),
    Dialogue("XFORWARD garbage", (
        Step(EHLO, ("250",)),
        Step(b"XFORWARD NAME=a\x1bb\r\nXFORWARD ADDR=\xff\xfe\r\nXFORWARD HELO=" + b"h" * 300 + b"\r\n"
             b"XFORWARD FOO=bar\r\nXFORWARD ADDR=999.1.1.1\r\nXFORWARD\r\n"
             b"XFORWARD HELO=+0D+0AX-Injected:+20yes IDENT=+00\r\n",
             ("501", "501", "501", "501", "501", "501", "250")),
        Step(ENVELOPE + data(CLEAN), ("250", "250", "354", "250")),
    ), forbidden=(b"\x1b",)),
    Dialogue("HELO with header-breaking characters", (
        Step(b"EHLO evil\rX-Injected: yes\r\n", ("250",)),
        Step(ENVELOPE + data(CLEAN), ("250", "250", "354", "250")),
    )),
    Dialogue("commands out of order and DATA without recipients", (
        Step(EHLO, ("250",)),
        Step(b"RCPT TO:<b@example.com>\r\nDATA\r\nMAIL FROM:<a@example.org>\r\n"
             b"MAIL FROM:<a@example.org>\r\nDATA\r\nRSET\r\n",
             ("503", "503", "250", "503", "503", "250")),
    )),
    Dialogue("NUL, 8-bit and undecodable bytes inside DATA; an empty message; no body", (
        Step(EHLO, ("250",)),
        Step(ENVELOPE + data(b"Subject: \xff\xfe\x00\x1b\r\nFrom: \xc3(\x00\r\n\r\n\x00\x00body\x80\r\n")
             + ENVELOPE + b"DATA\r\n.\r\n" + ENVELOPE + data(b"Subject: only headers\r\n"),
             ("250", "250", "354", "250", "250", "250", "354", "250", "250", "250", "354", "250")),
    )),
    Dialogue("many recipients, duplicates, and a recipient over the limit", (
        Step(EHLO, ("250",)),
        Step(b"MAIL FROM:<a@example.org> SIZE=999999999999999999999 BODY=8BITMIME\r\n", ("552",)),
        Step(b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n", ("501",)),
        Step(b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n", ("250",)),
        Step(b"RCPT TO:<b@example.com>\r\n" * 1000 + b"RCPT TO:<c@example.com>\r\n" + data(CLEAN),
             ("250",) * 1000 + ("452", "354", "250")),
    )),
    Dialogue("a stall inside DATA is timed out", (
        Step(EHLO, ("250",)),
        Step(ENVELOPE + b"DATA\r\n" + CLEAN + b"x" * 100_000, ("250", "250", "354")),
        Step(b"", None),
    )),
    Dialogue("a stall before any command is timed out", (
        Step(b"", None),
    )),
)

LHLO = b"LHLO pf.example\r\n"

#: The same kind of dialogues for a content filter speaking LMTP (filter_protocol = lmtp):
#: after DATA one reply per accepted recipient, each of them one safe line.
LMTP_DIALOGUES: tuple[Dialogue, ...] = (
    Dialogue("LMTP: reply injection, one reply per recipient, next transaction in step", (
        Step(LHLO, ("250",)),
        Step(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
             + data(BANNED) + ENVELOPE + data(CLEAN) + b"QUIT\r\n",
             ("250", "250", "250", "354", "554", "554", "250", "250", "354", "250", "221")),
    ), forbidden=(b"\x00", b"\x1b")),
    Dialogue("LMTP: HELO and EHLO are not LMTP; a refused recipient gets no reply after DATA", (
        Step(b"HELO pf.example\r\nEHLO pf.example\r\n" + LHLO, ("500", "500", "250")),
        Step(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<\"b\x01\"@example.com>\r\nRCPT TO:<b@example.com>\r\n"
             + data(CLEAN), ("250", "501", "250", "354", "250")),
    )),
    Dialogue("LMTP: a stall inside DATA is timed out", (
        Step(LHLO, ("250",)),
        Step(ENVELOPE + b"DATA\r\n" + CLEAN + b"x" * 100_000, ("250", "250", "354")),
        Step(b"", None),
    )),
)
