"""ClamavScanner against a real clamd (Debian clamav-daemon) started by the clamd_server fixture."""

from __future__ import annotations

import asyncio

import pytest

from filterd.config import Config
from filterd.content.clamav import ClamavScanner
from tests.fixtures.clamd import (
    BODY_SIGNATURE,
    HASH_SIGNATURE,
    SIGNATURE_PREFIX,
    STREAM_MAX_LENGTH,
    ClamdServer,
    clean_message,
    eicar,
    eicar_mime_message,
    find_program,
)

pytestmark = pytest.mark.integration


def scanner_for(spec: str, timeout: str = "20s") -> ClamavScanner:
    return ClamavScanner(Config.from_text(f"clamav_socket = {spec}\nclamav_timeout = {timeout}\n"))


@pytest.fixture(params=["unix", "inet"])
def scanner(request: pytest.FixtureRequest, clamd_server: ClamdServer) -> ClamavScanner:
    spec = clamd_server.spec_unix if request.param == "unix" else clamd_server.spec_inet
    return scanner_for(spec)


async def test_ping(scanner: ClamavScanner) -> None:
    assert await scanner.ping() is True


async def test_raw_eicar_is_infected(scanner: ClamavScanner) -> None:
    result = await scanner.scan(eicar())
    assert result.status == "infected"
    assert result.error is None
    assert len(result.virus_names) == 1
    assert result.virus_names[0] in (HASH_SIGNATURE, BODY_SIGNATURE)


async def test_eicar_attached_in_base64_is_found_by_mime_decoding(scanner: ClamavScanner) -> None:
    message = eicar_mime_message()
    assert b"EICAR" not in message  # only clamd's MIME decoding can reveal it
    result = await scanner.scan(message)
    assert result.status == "infected"
    assert result.virus_names[0].startswith(SIGNATURE_PREFIX)


async def test_eicar_quoted_in_a_text_body_matches_the_body_signature(scanner: ClamavScanner) -> None:
    message = clean_message(2000) + b"\r\n" + eicar() + b"\r\n"
    result = await scanner.scan(message)
    assert result == result.__class__("infected", [BODY_SIGNATURE], None, result.elapsed)


@pytest.mark.parametrize("size", [0, 4096, 1024 * 1024])
async def test_clean_messages(scanner: ClamavScanner, size: int) -> None:
    result = await scanner.scan(clean_message(size))
    assert (result.status, result.virus_names, result.error) == ("clean", [], None)
    assert result.elapsed > 0


async def test_concurrent_scans_do_not_mix_conversations(scanner: ClamavScanner) -> None:
    messages = [eicar() if i % 2 else clean_message(8192) for i in range(12)]
    results = await asyncio.gather(*(scanner.scan(m) for m in messages))
    assert [r.status for r in results] == ["infected" if i % 2 else "clean" for i in range(12)]


async def test_stream_over_stream_max_length_is_unchecked(scanner: ClamavScanner, clamd_server: ClamdServer) -> None:
    """Not clamd's failure but the message's: the same on every retry (no tempfail loop)."""
    result = await scanner.scan(clean_message(STREAM_MAX_LENGTH + 1024 * 1024))
    assert result.status == "unchecked"
    assert "INSTREAM size limit exceeded" in (result.error or "")
    assert str(scanner.endpoint) in (result.error or "")
    assert await scanner.ping()  # clamd itself is fine afterwards


async def test_clamd_down_is_an_error_and_recovers(own_clamd: ClamdServer) -> None:
    unix, inet = scanner_for(own_clamd.spec_unix), scanner_for(own_clamd.spec_inet)
    own_clamd.stop()
    try:
        for scanner in (unix, inet):
            result = await scanner.scan(eicar())
            assert result.status == "error"
            assert result.virus_names == []
            assert (result.error or "").startswith(f"clamd at {scanner.endpoint}: ")
            assert await scanner.ping() is False
        refused = await inet.scan(b"x")
        assert "connection refused" in (refused.error or "")
    finally:
        own_clamd.start()
    for scanner in (unix, inet):
        assert await scanner.ping() is True
        assert (await scanner.scan(eicar())).status == "infected"
        assert (await scanner.scan(clean_message())).status == "clean"


async def test_hash_signature_alone_finds_the_decoded_attachment(clamd_server: ClamdServer, tmp_path) -> None:
    """With only the MD5 signature, a match proves clamd hashed the base64-decoded part."""
    hash_only = ClamdServer(tmp_path, clamd_server.clamd, find_program("sigtool") or "sigtool")
    (tmp_path / "db" / "filterd-test.ndb").unlink()
    hash_only.start()
    try:
        result = await scanner_for(hash_only.spec_unix).scan(eicar_mime_message())
    finally:
        hash_only.stop()
    assert (result.status, result.virus_names) == ("infected", [HASH_SIGNATURE])
