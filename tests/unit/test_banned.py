"""amavisd-new style banned file checks: descriptors, sniffing, archives, limits."""

from __future__ import annotations

import base64
import io
import random
import struct
import zipfile
from pathlib import Path

import pytest

from filterd.config import Config, ConfigError
from filterd.content.banned import UNDECIPHERABLE, BannedChecks, check_banned, sniff
from filterd.content.message import Message
from filterd.content.params import DEFAULT_BANNED_FILENAME

REPO = Path(__file__).resolve().parents[2]

EXE = b"MZ" + b"\x90" * 62 + b"This program cannot be run in DOS mode" + b"\x00" * 200


def default_checks(**params: str) -> BannedChecks:
    text = "".join(f"{k} = {v}\n" for k, v in params.items())
    return BannedChecks.from_config(Config.from_text(text))


def table_checks(tmp_path: Path, rules: str, **params: str) -> BannedChecks:
    path = tmp_path / "banned"
    path.write_text(rules)
    return default_checks(banned_filename_maps=f"regexp:{path}", **params)


def attachment(filename: str | None, data: bytes, ctype: str = "application/octet-stream",
               name_param: str | None = None, raw_disposition: str | None = None) -> bytes:
    params = f'; name="{name_param}"' if name_param else ""
    disposition = raw_disposition or (f'attachment; filename="{filename}"' if filename else "attachment")
    return (
        b"From: a@b.example\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n"
        b"--XYZ\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--XYZ\r\n"
        + f"Content-Type: {ctype}{params}\r\nContent-Disposition: {disposition}\r\n".encode()
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(data).replace(b"\n", b"\r\n")
        + b"--XYZ--\r\n"
    )


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def encrypt_flag(data: bytes) -> bytes:
    """Set the 'encrypted' bit in every local and central header (zipfile cannot write it)."""
    out = bytearray(data)
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(sig)
        while pos >= 0:
            (flags,) = struct.unpack_from("<H", out, pos + offset)
            struct.pack_into("<H", out, pos + offset, flags | 1)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def check(c: BannedChecks, raw: bytes):
    return check_banned(c, Message(raw))


# -- the shipped table ---------------------------------------------------------------------

def test_default_table_resolves_from_package_and_rules_dir() -> None:
    c = default_checks()
    assert c.tables and Path(DEFAULT_BANNED_FILENAME).is_file()
    assert (REPO / "rules" / "banned_filename").read_text() == Path(DEFAULT_BANNED_FILENAME).read_text()


def test_harmless_attachment_passes() -> None:
    r = check(default_checks(), attachment("report.2024.pdf", b"%PDF-1.7 hello"))
    assert not r.banned and r.names == [] and r.symbols == []


@pytest.mark.parametrize("name", ["setup.exe", "SETUP.EXE", "run.js", "tool.scr", "link.lnk", "disk.iso",
                                  "a.vbs", "install.msi", "x.exe.", "y.bat  "])
def test_banned_extensions(name: str) -> None:
    r = check(default_checks(), attachment(name, b"just some bytes"))
    assert r.banned
    assert r.symbols[0].name == "BANNED_FILENAME"
    assert name.strip() in r.symbols[0].evidence or name in r.symbols[0].evidence


def test_double_extension() -> None:
    r = check(default_checks(), attachment("invoice.pdf.exe", b"not really an exe"))
    assert r.banned
    assert r.symbols[0].description == "banned double extension"
    assert r.names == ["multipart/mixed | application/octet-stream,invoice.pdf.exe"]


def test_double_extension_with_spaces() -> None:
    assert check(default_checks(), attachment("photo.jpg      .scr", b"x")).banned


def test_declared_mime_type() -> None:
    r = check(default_checks(), attachment("data.bin", b"plain", ctype="application/x-msdownload"))
    assert r.banned and r.symbols[0].description == "banned MIME type"
    assert "application/x-msdownload" in r.symbols[0].evidence


def test_name_from_content_type_parameter() -> None:
    raw = attachment(None, b"x", name_param="virus.scr")
    assert check(default_checks(), raw).banned


def test_rfc2047_and_rfc2231_names_are_decoded() -> None:
    encoded = "=?UTF-8?B?" + base64.b64encode("r\u00e9sum\u00e9.exe".encode()).decode() + "?="
    assert check(default_checks(), attachment(encoded, b"x")).banned
    raw = attachment(None, b"x", raw_disposition="attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%2Eexe")
    r = check(default_checks(), raw)
    assert r.banned and "r\u00e9sum\u00e9.exe" in r.names[0]


def test_executable_content_named_pdf_is_sniffed() -> None:
    r = check(default_checks(), attachment("invoice.pdf", EXE, ctype="application/pdf"))
    assert r.banned
    assert r.names == ["multipart/mixed | application/pdf,invoice.pdf,.exe,.exe-ms"]
    assert r.symbols[0].evidence.startswith(".exe-ms in (")


def test_zip_containing_exe() -> None:
    data = make_zip({"readme.txt": b"hello", "docs/setup.exe": b"harmless"})
    r = check(default_checks(), attachment("docs.zip", data, ctype="application/zip"))
    assert r.banned
    assert r.names == ["multipart/mixed | application/zip,docs.zip,.zip | docs/setup.exe"]


def test_zip_member_sniffed_as_executable() -> None:
    data = make_zip({"image.jpg": EXE})
    r = check(default_checks(), attachment("photos.zip", data))
    assert r.banned and r.names[0].endswith("| image.jpg,.exe,.exe-ms")


def test_zip_in_zip_within_depth_limit() -> None:
    inner = make_zip({"payload.exe": b"x"})
    outer = make_zip({"inner.zip": inner})
    raw = attachment("outer.zip", outer)
    r = check(default_checks(), raw)
    assert r.banned and r.names[0].endswith("| inner.zip,.zip | payload.exe")
    too_deep = check(default_checks(banned_archive_max_depth="1"), raw)
    assert not too_deep.banned and too_deep.unchecked == ["archives nested deeper than 1 levels"]
    off = check(default_checks(banned_archive_max_depth="0"), raw)  # archives not looked into at all
    assert not off.banned and off.unchecked == []


def test_archive_depth_is_bounded_in_the_configuration() -> None:
    with pytest.raises(ConfigError, match="expected at most 20"):
        default_checks(banned_archive_max_depth="1000")


def test_zip_declared_as_something_else_is_still_opened() -> None:
    data = make_zip({"evil.scr": b"x"})
    assert check(default_checks(), attachment("holiday.jpg", data, ctype="image/jpeg")).banned


def test_encrypted_zip_member_is_flagged() -> None:
    data = encrypt_flag(make_zip({"secret.doc": b"whatever"}))
    raw = attachment("locked.zip", data)
    r = check(default_checks(), raw)
    assert not r.banned
    assert [s.name for s in r.symbols] == ["BANNED_ARCHIVE_ENCRYPTED"]
    assert "secret.doc" in r.symbols[0].evidence
    assert r.unchecked == ["encrypted archive member"]  # amavisd-new: UNCHECKED (encrypted)


def test_encrypted_member_can_be_banned(tmp_path: Path) -> None:
    data = encrypt_flag(make_zip({"secret.doc": b"whatever"}))
    c = table_checks(tmp_path, f"/^{UNDECIPHERABLE}$/ REJECT encrypted content\n")
    r = check(c, attachment("locked.zip", data))
    assert r.banned and r.symbols[-1].description == "encrypted content"


def test_encrypted_exe_name_is_still_seen() -> None:
    data = encrypt_flag(make_zip({"secret.exe": b"whatever"}))
    assert check(default_checks(), attachment("locked.zip", data)).banned


# -- allow rules, table semantics -------------------------------------------------------------

def test_ok_on_an_archive_allows_its_content(tmp_path: Path) -> None:
    rules = "/^\\.zip$/ OK\n/\\.exe$/ REJECT exe\n"
    data = make_zip({"setup.exe": b"x"})
    assert not check(table_checks(tmp_path, rules), attachment("tools.zip", data)).banned
    assert check(table_checks(tmp_path, rules), attachment("setup.exe", b"x")).banned


def test_zero_means_allow_like_amavisd(tmp_path: Path) -> None:
    rules = "/^application\\/zip$/ 0\n/\\.exe$/ REJECT\n"
    data = make_zip({"setup.exe": b"x"})
    assert not check(table_checks(tmp_path, rules), attachment("t.zip", data, ctype="application/zip")).banned


def test_dunno_continues_with_the_next_descriptor(tmp_path: Path) -> None:
    rules = "/^application\\/octet-stream$/ DUNNO\n/\\.exe$/ REJECT exe\n"
    assert check(table_checks(tmp_path, rules), attachment("a.exe", b"x")).banned


def test_nested_message_attachment() -> None:
    inner = attachment("nested.exe", b"x")
    raw = (b"Subject: fwd\r\nContent-Type: multipart/mixed; boundary=\"OUT\"\r\n\r\n"
           b"--OUT\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--OUT--\r\n")
    r = check(default_checks(), raw)
    assert r.banned
    assert r.names == ["multipart/mixed | message/rfc822 | multipart/mixed | application/octet-stream,nested.exe"]


def test_no_tables_no_work() -> None:
    c = default_checks(banned_filename_maps="")
    assert not check(c, attachment("a.exe", b"x")).banned


# -- limits and broken archives -------------------------------------------------------------

def test_too_many_members(tmp_path: Path) -> None:
    data = make_zip({f"file{i}.txt": b"x" for i in range(30)} | {"last.exe": b"x"})
    r = check(default_checks(banned_archive_max_members="10"), attachment("many.zip", data))
    assert not r.banned
    assert [s.name for s in r.symbols] == ["BANNED_ARCHIVE_LIMIT"]
    assert r.unchecked == ["more than 10 archive members"]


def test_member_budget_bypass_is_unchecked_not_clean() -> None:
    """The issue's case: 1,000 dummy members, then evil.exe, at the default limit."""
    data = make_zip({f"d{i}.txt": b"x" for i in range(1000)} | {"evil.exe": EXE})
    r = check(default_checks(), attachment("a.zip", data))
    assert not r.banned
    assert r.unchecked == ["more than 1000 archive members"]


def test_zip_bomb_member_is_only_sniffed() -> None:
    data = make_zip({"zeros.bin": b"\0" * (64 * 1024 * 1024)})
    assert len(data) < 200_000
    r = check(default_checks(), attachment("bomb.zip", data))
    assert not r.banned and r.symbols == []


def test_nested_zip_over_the_byte_budget() -> None:
    noise = random.Random(0).randbytes(2 * 1024 * 1024)  # does not compress
    inner = make_zip({"noise.bin": noise, "late.exe": b"x"})
    outer = make_zip({"inner.zip": inner})
    r = check(default_checks(banned_archive_max_size="1m"), attachment("outer.zip", outer))
    assert not r.banned
    assert [s.name for s in r.symbols] == ["BANNED_ARCHIVE_LIMIT"]
    assert r.unchecked == ["more than 1048576 bytes decompressed"]


def test_nested_zip_lying_about_its_size() -> None:
    inner = make_zip({"noise.bin": random.Random(1).randbytes(2 * 1024 * 1024)})
    outer = bytearray(make_zip({"inner.zip": inner}))
    central = outer.rfind(b"PK\x01\x02")  # the outer central directory comes last
    struct.pack_into("<I", outer, central + 24, 100)  # declared uncompressed size: 100 bytes
    r = check(default_checks(banned_archive_max_size="512k"), attachment("liar.zip", bytes(outer)))
    assert not r.banned
    assert {s.name for s in r.symbols} <= {"BANNED_ARCHIVE_LIMIT", "BANNED_ARCHIVE_DEFECT"} and r.symbols


@pytest.mark.parametrize("data", [
    b"PK\x03\x04" + b"garbage" * 20,
    b"PK\x05\x06" + b"\0" * 5,
    make_zip({"a.txt": b"hello world" * 100})[:-30],
    make_zip({"a.txt": b"hello world" * 100})[:60] + make_zip({"a.txt": b"hello world" * 100})[90:],
])
def test_malformed_zip_is_a_defect_not_an_exception(data: bytes) -> None:
    r = check(default_checks(), attachment("broken.zip", data))
    assert not r.banned
    assert [s.name for s in r.symbols] == ["BANNED_ARCHIVE_DEFECT"]
    assert r.unchecked  # what a broken archive holds was not seen


def test_corrupt_member_data_is_a_defect() -> None:
    data = bytearray(make_zip({"a.txt": b"hello world " * 1000}))
    data[60:80] = b"\xff" * 20  # inside the deflated data
    r = check(default_checks(), attachment("crc.zip", bytes(data)))
    assert [s.name for s in r.symbols] == ["BANNED_ARCHIVE_DEFECT"]


@pytest.mark.parametrize("raw", [
    b"",
    b"Subject: x\r\n\r\nno mime",
    (b"Content-Type: multipart/mixed; boundary=\"a\"\r\n\r\n--a\r\nContent-Transfer-Encoding: base64\r\n"
     b"Content-Disposition: attachment; filename=\"x.bin\"\r\n\r\n!!!not base64!!!\r\n--a--\r\n"),
    b"Content-Type: application/octet-stream; name=\r\n\r\nx",
    b"Content-Disposition: attachment; filename*=bogus''%ZZ%\r\n\r\nx",
    b"Content-Type: message/rfc822\r\n\r\n",
])
def test_malformed_mime_does_not_raise(raw: bytes) -> None:
    check(default_checks(), raw)


@pytest.mark.parametrize("levels", [60, 1000])
def test_deep_mime_nesting_is_bounded(levels: int) -> None:
    """1,000 levels made the stdlib parser raise RecursionError: a 451 on every retry."""
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (i, i)
                   for i in range(levels))
    r = check(default_checks(), raw + b"Content-Type: text/plain\r\n\r\nx\r\n")
    assert not r.banned


# -- sniffing -------------------------------------------------------------------------------

def _pe(dll: bool) -> bytes:
    data = bytearray(512)
    data[0:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, 0x80)
    data[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", data, 0x80 + 22, 0x2102 if dll else 0x0102)
    return bytes(data)


@pytest.mark.parametrize("data, types", [
    (EXE, ["exe", "exe-ms"]),
    (_pe(False), ["exe", "exe-ms"]),
    (_pe(True), ["exe", "exe-ms", "dll"]),
    (b"MZ", ["exe", "exe-ms"]),
    (b"\x7fELF\x02\x01\x01", ["elf"]),
    (make_zip({"a": b"b"}), ["zip"]),
    (b"Rar!\x1a\x07\x01\x00", ["rar"]),
    (b"7z\xbc\xaf\x27\x1c\x00\x04", ["7z"]),
    (b"%PDF-1.4\n", ["pdf"]),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00", ["doc", "ole"]),
    (b"\x1f\x8b\x08\x00", ["gz"]),
    (b"BZh91AY", ["bz2"]),
    (b"MSCF\0\0\0\0", ["cab"]),
    (b"{\\rtf1\\ansi", ["rtf"]),
    (b"L\x00\x00\x00\x01\x14\x02\x00\x00", ["lnk"]),
    (b"\x78\x9f\x3e\x22\x00", ["tnef"]),
    (b"\x00\x00-lh5-", ["lha"]),
    (b"\0" * 257 + b"ustar\x0000", ["tar"]),
    (b"\0" * 32769 + b"CD001", ["iso"]),
    (b"plain text", []),
    (b"", []),
])
def test_sniff(data: bytes, types: list[str]) -> None:
    assert sniff(data) == types
