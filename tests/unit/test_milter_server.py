"""The milter front end in-process: session, service and server over a real socket, with
the restriction engine and content pipeline built from a configuration (no mocks of
them); the MTA side is written here from the protocol's encoders."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.content.message import HeaderEdits, Message
from filterd.greylist import Greylister, open_store
from filterd.milter import protocol as p
from filterd.milter.edits import header_actions
from filterd.milter.server import MilterServer
from filterd.milter.service import MilterService
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services

#: Also on the loop ``filterd serve`` runs (it writes replies just before it polls).
pytestmark = pytest.mark.worker_loop

POSTFIX_OFFER = p.OptNeg(6, 0x1FF, 0x1FFFFF)
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class Mta:
    """The MTA side of one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def send(self, *cmds: p.Command) -> None:
        self.writer.write(b"".join(p.encode_command(c) for c in cmds))
        await self.writer.drain()

    async def read(self) -> p.Response:
        head = await asyncio.wait_for(self.reader.readexactly(4), 10)
        (length,) = struct.unpack(">I", head)
        data = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return p.Response(data[:1], data[1:])

    async def ask(self, *cmds: p.Command) -> p.Response:
        await self.send(*cmds)
        return await self.read()

    async def until_final(self) -> list[p.Response]:
        """Responses to the end of message: actions, then the final one."""
        out = [await self.read()]
        while out[-1].code in (b"h", b"m", b"i", b"+", b"-", b"q", b"p"):
            out.append(await self.read())
        return out

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 10) == b""
        except ConnectionResetError:
            return True

    async def negotiate(self) -> tuple[int, int, int]:
        resp = await self.ask(POSTFIX_OFFER)
        assert resp.code == b"O"
        return struct.unpack(">III", resp.data[:12])

    async def envelope(self, sender: str = "<alice@sender.example>", rcpt: str = "<bob@example.com>",
                       client: str = "192.0.2.10") -> p.Response:
        """Connect, HELO, MAIL (reply-less with the defaults), then RCPT, which answers."""
        await self.send(p.Macros(b"C", {"j": "mx.example", "{daemon_name}": "smtpd", "_": "c [x]"}),
                        p.Connect("client.example", "4", 40000, client),
                        p.Helo("client.example"),
                        p.Macros(b"M", {"{mail_addr}": sender.strip("<>")}), p.Mail([sender, "SIZE=100"]))
        return await self.ask(p.Macros(b"R", {"{rcpt_addr}": rcpt.strip("<>")}), p.Rcpt([rcpt]))

    async def message(self, headers: list[tuple[bytes, bytes]], body: bytes) -> list[p.Response]:
        await self.send(p.Macros(b"T", {"i": "4ABCDE1234"}), p.Simple(p.SMFIC_DATA))
        chunks = [p.Body(body[i:i + p.MAX_BODY_CHUNK]) for i in range(0, len(body), p.MAX_BODY_CHUNK)]
        await self.send(*[p.Header(n, v) for n, v in headers], p.Simple(p.SMFIC_EOH), *chunks,
                        p.Macros(b"E", {"i": "4ABCDE1234"}), p.EndOfMessage())
        return await self.until_final()


def config(tmp_path: Path, extra: str = "") -> Config:
    rules = tmp_path / "gtube.cf"
    rules.write_text("body GTUBE /XJS\\*C4JDBQADN1\\.NSBN3\\*2IDNEN\\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\\*C\\.34X/\n"
                     "score GTUBE 1000\n")
    return Config.from_text(
        f"data_directory = {tmp_path / 'data'}\nmyhostname = filter.example\n"
        f"content_checks = postfix_checks rules\nrules_directory = {tmp_path}\nrules_extra_directories =\n"
        "spam_tag_level = -999\ngreylist_delay = 1s\n" + extra)


@pytest.fixture
async def milter(tmp_path: Path) -> AsyncIterator:
    started: list[tuple[MilterServer, Services]] = []

    async def start(extra: str = "", **server_args: object) -> tuple[MilterServer, int]:
        cfg = config(tmp_path, extra)
        greylister = Greylister(cfg, open_store(cfg), "filter.example")
        await greylister.start()
        services = Services(cfg, greylister=greylister)
        service = MilterService.from_config(cfg, build_engine(cfg, services))
        service.check_config()
        server = MilterServer(service, **server_args)  # type: ignore[arg-type]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        await server.start(sock)
        started.append((server, services))
        return server, sock.getsockname()[1]

    yield start
    for server, services in started:
        await server.stop(2)
        await services.close()


async def connect(port: int) -> Mta:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Mta(reader, writer)


CLEAN = [(b"Received", b" from client.example by mx.example"), (b"From", b" alice@sender.example"),
         (b"Subject", b" hello"), (b"X-Spam-Flag", b" YES"), (b"Message-ID", b" <m1@sender.example>")]


# -- negotiation -----------------------------------------------------------------------
async def test_negotiation_follows_the_configuration(milter) -> None:
    _, port = await milter()
    mta = await connect(port)
    version, actions, protocol = await mta.negotiate()
    assert version == 6
    assert actions == p.SMFIF_ADDHDRS | p.SMFIF_CHGHDRS | p.SMFIF_QUARANTINE | p.SMFIF_ADDRCPT | p.SMFIF_DELRCPT
    assert protocol & p.SMFIP_NR_CONN and protocol & p.SMFIP_NR_HELO and protocol & p.SMFIP_NR_MAIL
    assert not protocol & p.SMFIP_NR_RCPT  # check_greylist answers at RCPT
    assert protocol & p.SMFIP_NR_HDR and protocol & p.SMFIP_NR_BODY and protocol & p.SMFIP_NR_EOH
    assert protocol & p.SMFIP_NODATA and protocol & p.SMFIP_NOUNKNOWN and protocol & p.SMFIP_NOEOH
    assert not protocol & (p.SMFIP_NOHDRS | p.SMFIP_NOBODY)


async def test_without_content_filter_headers_and_body_are_not_asked_for(milter) -> None:
    _, port = await milter("milter_content_filter = no\nmilter_rcpt_restrictions =\n")
    mta = await connect(port)
    _, _, protocol = await mta.negotiate()
    assert protocol & p.SMFIP_NOHDRS and protocol & p.SMFIP_NOBODY and protocol & p.SMFIP_NR_RCPT


# -- restrictions ----------------------------------------------------------------------
async def test_greylisting_at_rcpt_then_accepted_after_the_delay(milter) -> None:
    _, port = await milter()
    mta = await connect(port)
    await mta.negotiate()
    first = await mta.envelope()
    assert first.code == b"y"
    assert first.data.startswith(b"450 4.2.0 <bob@example.com>: Recipient address rejected: Greylisted")
    await mta.send(p.Simple(p.SMFIC_ABORT))
    await asyncio.sleep(1.2)
    second = await mta.ask(p.Macros(b"M", {}), p.Mail(["<alice@sender.example>"]),
                           p.Macros(b"R", {}), p.Rcpt(["<bob@example.com>"]))
    assert second.code == b"c"
    responses = await mta.message(CLEAN, b"hello\r\n")
    assert responses[-1].code == b"c"


async def test_reject_at_mail_is_a_replycode_with_the_sender_text(milter, tmp_path: Path) -> None:
    _, port = await milter("milter_mail_restrictions = check_sender_access inline:{ { spammer@bad.example = REJECT go away } }\n"
                           "milter_rcpt_restrictions = permit\n")
    mta = await connect(port)
    _, _, protocol = await mta.negotiate()
    assert not protocol & p.SMFIP_NR_MAIL
    await mta.send(p.Connect("client.example", "4", 40000, "192.0.2.10"), p.Helo("h"))
    resp = await mta.ask(p.Mail(["<spammer@bad.example>"]))
    assert (resp.code, resp.data) == (b"y", b"554 5.7.1 <spammer@bad.example>: Sender address rejected: go away\0")
    assert (await mta.ask(p.Simple(p.SMFIC_ABORT), p.Mail(["<ok@good.example>"]))).code == b"c"


async def test_prepend_and_hold_from_restrictions_reach_the_end_of_message(milter) -> None:
    _, port = await milter("milter_content_filter = no\nmilter_rcpt_restrictions = "
                           "check_recipient_access inline:{ { bob@example.com = PREPEND X-Seen: yes } },"
                           " check_sender_access inline:{ { alice@sender.example = HOLD suspicious } }\n")
    mta = await connect(port)
    await mta.negotiate()
    assert (await mta.envelope()).code == b"c"
    await mta.send(p.Simple(p.SMFIC_DATA))
    out = await mta.ask(p.EndOfMessage())
    rest = [out] + (await mta.until_final() if out.code != b"c" else [])
    codes = [r.code for r in rest]
    assert codes == [b"i", b"c"] or codes == [b"i", b"q", b"c"]


# -- content ---------------------------------------------------------------------------
async def test_clean_message_gets_spam_headers_replacing_outside_ones(milter) -> None:
    _, port = await milter("milter_rcpt_restrictions = permit\n")
    mta = await connect(port)
    await mta.negotiate()
    assert (await mta.envelope()).code == b"c"
    responses = await mta.message(CLEAN, b"hello\r\n")
    assert responses[-1].code == b"c"
    changes = [r for r in responses if r.code == b"m"]
    adds = [r for r in responses if r.code == b"h"]
    # the outside X-Spam-Flag: YES is replaced in place by ours, not left beside it
    assert [c.data for c in changes] == [b"\0\0\0\x01X-Spam-Flag\0 NO\0"]
    names = [a.data.split(b"\0")[0] for a in adds]
    assert b"X-Spam-Flag" not in names and b"X-Spam-Status" in names and b"X-Spam-Score" in names
    status = next(a.data for a in adds if a.data.startswith(b"X-Spam-Status"))
    assert status.startswith(b"X-Spam-Status\0 No, score=0 ")


async def test_gtube_is_refused_at_end_of_data_and_spam_tagged_on_pass(milter) -> None:
    _, port = await milter("milter_rcpt_restrictions = permit\nspam_action = reject\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    [final] = await mta.message(CLEAN, GTUBE + b"\r\n")
    assert final.code == b"y" and final.data.startswith(b"554 5.7.0 Reject, id=")


async def test_spam_tag_changes_the_subject(milter) -> None:
    _, port = await milter("milter_rcpt_restrictions = permit\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    responses = await mta.message(CLEAN, GTUBE + b"\r\n")
    assert b"\0\0\0\x01Subject\0 ***Spam*** hello\0" in [r.data for r in responses if r.code == b"m"]
    assert responses[-1].code == b"c"


async def test_spam_quarantine_stores_a_copy_then_discards(milter) -> None:
    server, port = await milter("milter_rcpt_restrictions = permit\nspam_action = quarantine\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    [final] = await mta.message(CLEAN, GTUBE + b"\r\n")
    assert final.code == b"d"
    [entry] = await server.service.quarantine.list(kind="spam")
    assert entry.recipients == ["bob@example.com"] and entry.sender == "alice@sender.example"
    _, data = await server.service.quarantine.get(entry.id)
    assert b"X-Spam-Flag: YES" in data and GTUBE in data


async def test_spam_hold_goes_to_postfix_hold_queue(milter) -> None:
    _, port = await milter("milter_rcpt_restrictions = permit\nspam_action = hold\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    responses = await mta.message(CLEAN, GTUBE + b"\r\n")
    assert [r.code for r in responses][-2:] == [b"q", b"c"]
    assert responses[-2].data == b"spam\0"


async def test_header_checks_reject_at_end_of_data(milter, tmp_path: Path) -> None:
    checks = tmp_path / "header_checks"
    checks.write_text("/^Subject: hello/ REJECT no hellos here\n")
    _, port = await milter(f"milter_rcpt_restrictions = permit\nheader_checks = regexp:{checks}\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    [final] = await mta.message(CLEAN, b"x\r\n")
    assert (final.code, final.data) == (b"y", b"550 5.7.1 no hellos here\0")


async def test_oversized_message_is_refused_without_holding_it(milter) -> None:
    _, port = await milter("milter_rcpt_restrictions = permit\n", size_limit=70000)
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    [final] = await mta.message(CLEAN, b"x" * 65535 + b"y" * 10000)
    assert final.data.startswith(b"552 5.3.4")


# -- several messages, abort, quit_nc ---------------------------------------------------
async def test_several_messages_and_clients_on_one_connection(milter) -> None:
    _, port = await milter("milter_rcpt_restrictions = permit\n")
    mta = await connect(port)
    await mta.negotiate()
    for client in ("192.0.2.1", "192.0.2.2"):
        await mta.envelope(client=client)
        assert (await mta.message(CLEAN, b"one\r\n"))[-1].code == b"c"
        await mta.send(p.Mail(["<x@y>"]), p.Rcpt(["<z@w>"]))
        assert (await mta.read()).code == b"c"
        await mta.send(p.Simple(p.SMFIC_ABORT))  # a message given up half-way
        await mta.send(p.Mail(["<x@y>"]))
        assert (await mta.ask(p.Rcpt(["<z@w>"]))).code == b"c"
        assert (await mta.message(CLEAN, b"two\r\n"))[-1].code == b"c"
        await mta.send(p.Simple(p.SMFIC_QUIT_NC))
    await mta.send(p.Simple(p.SMFIC_QUIT))
    assert await mta.closed()


# -- malformed input -------------------------------------------------------------------
MALFORMED = {
    "bad length": b"\xff\xff\xff\xff",
    "zero length": b"\0\0\0\0",
    "unknown command": p.frame(b"z", b"junk"),
    "unsupported version": p.frame(b"O", struct.pack(">III", 2, 0x3F, 0x7F)),
    "command before negotiation": p.encode_command(p.Helo("x")),
    "header outside a message": p.encode_command(POSTFIX_OFFER) + p.encode_command(p.Header(b"A", b"b")),
    "string without NUL": p.encode_command(POSTFIX_OFFER) + p.frame(b"H", b"abc"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_input_ends_that_connection_only(milter, case: str, caplog) -> None:
    _, port = await milter("milter_rcpt_restrictions = permit\n")
    bystander = await connect(port)
    await bystander.negotiate()
    bad = await connect(port)
    bad.writer.write(MALFORMED[case])
    await bad.writer.drain()
    if case.endswith("negotiation") or case == "unsupported version" or case == "bad length" \
            or case == "zero length" or case == "unknown command":
        assert await bad.closed()
    else:
        assert (await bad.read()).code == b"O"  # the negotiation before the fault is answered
        assert await bad.closed()
    faults = [r for r in caplog.records if "closing the connection" in r.getMessage()]
    assert len(faults) == 1
    assert (await bystander.envelope()).code == b"c"  # the daemon keeps serving


async def test_truncated_packet_is_logged_when_the_mta_hangs_up(milter, caplog) -> None:
    _, port = await milter()
    mta = await connect(port)
    await mta.negotiate()
    mta.writer.write(p.encode_command(p.Helo("client.example"))[:6])
    await mta.writer.drain()
    mta.writer.close()
    for _ in range(100):
        if any("truncated" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    assert any("middle of a packet (6 bytes; truncated)" in r.getMessage() for r in caplog.records)


async def test_idle_connection_times_out(milter, caplog) -> None:
    _, port = await milter(timeout=0.3)
    mta = await connect(port)
    await mta.negotiate()
    assert await mta.closed()
    assert any("timeout after" in r.getMessage() for r in caplog.records)


async def test_connection_limit(milter, caplog) -> None:
    _, port = await milter(max_connections=1)
    first = await connect(port)
    await first.negotiate()
    second = await connect(port)
    assert await second.closed()
    assert any("too many connections" in r.getMessage() for r in caplog.records)


async def test_stop_waits_for_a_message_in_progress(milter) -> None:
    server, port = await milter("milter_rcpt_restrictions = permit\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    stopping = asyncio.create_task(server.stop(5))
    await asyncio.sleep(0.1)
    assert not stopping.done()  # in the middle of a message: not cut
    responses = await mta.message(CLEAN, b"body\r\n")
    assert responses[-1].code == b"c"
    assert await mta.closed()  # closed once the message is done
    await asyncio.wait_for(stopping, 5)


# -- header edits ----------------------------------------------------------------------
def test_header_actions_delete_last_first_and_insert_in_place() -> None:
    msg = Message(b"Received: a\r\nX-Spam-Flag: YES\r\nX-Spam-Flag: YES\r\nSubject: s\r\n\r\nbody\r\n")
    edits = HeaderEdits()
    edits.remove(1)
    edits.remove(2)
    edits.add("X-Spam-Flag", "NO")
    edits.insert_before(3, "X-Before: subject")
    out, _ = p.decode_responses(b"".join(header_actions(msg, edits, True, True, True)))
    assert [(r.code, r.data) for r in out] == [
        (b"m", b"\0\0\0\x02X-Spam-Flag\0\0"),       # the second copy deleted first
        (b"m", b"\0\0\0\x01X-Spam-Flag\0 NO\0"),    # the first replaced by ours
        (b"i", b"\0\0\0\x03X-Before\0 subject\0"),
    ]


def test_header_actions_without_change_permission_only_add() -> None:
    msg = Message(b"X-Spam-Flag: YES\r\n\r\nb")
    edits = HeaderEdits()
    edits.remove(0)
    edits.add("X-Spam-Flag", "NO")
    out, _ = p.decode_responses(b"".join(header_actions(msg, edits, False, False, True)))
    assert [(r.code, r.data) for r in out] == [(b"h", b"X-Spam-Flag\0NO\0")]


# -- failures are tempfails ------------------------------------------------------------
async def test_clamd_failure_follows_clamav_failure_action(milter, tmp_path: Path) -> None:
    missing = tmp_path / "no-clamd.sock"
    _, port = await milter("milter_rcpt_restrictions = permit\ncontent_checks = clamav rules\n"
                           f"clamav_socket = unix:{missing}\nclamav_timeout = 2s\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    [final] = await mta.message(CLEAN, b"x\r\n")
    assert final.code == b"y" and final.data.startswith(b"451 4.5.0 Error in processing, id=")
    assert b"virus_scan FAILED" in final.data


async def test_clamd_failure_passes_when_told_to(milter, tmp_path: Path) -> None:
    missing = tmp_path / "no-clamd.sock"
    _, port = await milter("milter_rcpt_restrictions = permit\ncontent_checks = clamav rules\n"
                           f"clamav_socket = unix:{missing}\nclamav_timeout = 2s\nclamav_failure_action = pass\n")
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    responses = await mta.message(CLEAN, b"x\r\n")
    assert responses[-1].code == b"c"
    assert any(r.data.startswith(b"X-Virus-Scanned\0 not scanned") for r in responses if r.code == b"h")


async def test_internal_error_in_the_content_pipeline_is_a_tempfail(milter, caplog) -> None:
    server, port = await milter("milter_rcpt_restrictions = permit\n")

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    server.service.pipeline.scan = broken  # type: ignore[method-assign]
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    [final] = await mta.message(CLEAN, b"x\r\n")
    assert final.code == b"y" and final.data.startswith(b"451 4.5.0 Error in processing, id=")
    assert any("internal error while filtering" in r.getMessage() for r in caplog.records)
    assert (await mta.ask(p.Mail(["<a@b>"]), p.Rcpt(["<c@d>"]))).code == b"c"  # connection goes on


async def test_internal_error_in_a_restriction_is_a_tempfail(milter) -> None:
    server, port = await milter()

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    server.service.engine.evaluate = broken  # type: ignore[method-assign]
    mta = await connect(port)
    await mta.negotiate()
    reply = await mta.envelope()
    assert reply.code == b"y" and reply.data.startswith(b"451 4.3.0 ")


async def test_mta_hanging_up_does_not_cut_a_quarantine_in_half(milter) -> None:
    server, port = await milter("milter_rcpt_restrictions = permit\nspam_action = quarantine\n")
    pipeline = server.service.pipeline
    real_scan = pipeline.scan

    async def slow_scan(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(0.3)
        return await real_scan(*args, **kwargs)  # type: ignore[arg-type]

    pipeline.scan = slow_scan  # type: ignore[method-assign]
    mta = await connect(port)
    await mta.negotiate()
    await mta.envelope()
    await mta.send(p.Header(b"Subject", b" x"), p.Body(GTUBE + b"\r\n"), p.EndOfMessage())
    mta.writer.close()  # Postfix gave up (its milter_content_timeout, say)
    for _ in range(100):
        if await server.service.quarantine.list(kind="spam"):
            break
        await asyncio.sleep(0.05)
    [entry] = await server.service.quarantine.list(kind="spam")
    assert entry.recipients == ["bob@example.com"]


async def test_connect_helo_and_data_lists_answer_their_own_step(milter) -> None:
    _, port = await milter("milter_connect_restrictions = check_client_access inline:{ 192.0.2.66=REJECT }\n"
                           "milter_helo_restrictions = reject_invalid_helo_hostname\n"
                           "milter_data_restrictions = defer\nmilter_rcpt_restrictions =\n")
    mta = await connect(port)
    _, _, protocol = await mta.negotiate()
    assert not protocol & (p.SMFIP_NR_CONN | p.SMFIP_NR_HELO | p.SMFIP_NR_DATA | p.SMFIP_NODATA)
    refused = await mta.ask(p.Connect("bad.example", "4", 1, "192.0.2.66"))
    assert refused.code == b"y" and refused.data.startswith(b"554 5.7.1 <bad.example[192.0.2.66]>: Client host rejected")
    await mta.send(p.Simple(p.SMFIC_QUIT_NC))
    assert (await mta.ask(p.Connect("good.example", "4", 1, "192.0.2.1"))).code == b"c"
    helo = await mta.ask(p.Helo("bad helo!"))
    assert helo.code == b"y" and helo.data.startswith(b"501 5.5.2 <bad helo!>: Helo command rejected")
    assert (await mta.ask(p.Helo("good.example"))).code == b"c"
    await mta.send(p.Mail(["<a@b>"]), p.Rcpt(["<c@d>"]))
    data = await mta.ask(p.Simple(p.SMFIC_DATA))
    assert data.code == b"y" and data.data.startswith(b"450 4.7.1 <DATA>: Data command rejected")
