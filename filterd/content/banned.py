"""Banned file checks as amavisd-new does them (``@banned_filename_maps``).

amavisd-new does not ask "is there an .exe attachment?" but describes every MIME part
with a few short strings ("part descriptors") and looks each one up in the banned
tables: the declared MIME type (``application/x-msdownload``), the declared file names
(``invoice.pdf.exe``), and the type found by looking at the content, written with a
leading dot (``.exe``, ``.exe-ms``, ``.zip``). The content type matters because the
declared name and type are the sender's word: an executable called ``invoice.pdf`` is
still ``.exe-ms``. Members of zip archives are described the same way (their names and
sniffed types), looked into without ever writing anything to disk, with bounds on
depth, member count and bytes decompressed so an archive bomb costs nothing.

A part's descriptors are looked up with its enclosing parts' first (message, then
multipart, then archive, then member). The first table answer decides, as in amavisd-new:
``OK`` (or ``0``) allows the part and everything inside it, ``DUNNO`` decides nothing,
anything else bans it. Unlike amavisd-new, where one regexp list is tried in rule order
against all of a path's descriptors at once, filterd's tables answer one key at a time,
so an ancestor's allow rule wins over a descendant's ban whatever their order.

Encrypted or unreadable archive members get the descriptor ``UNDECIPHERABLE``
(amavisd-new's name), so a table can ban them too; broken archives and exceeded
limits are reported as symbols, never raised. Whatever could not be looked at (a
limit reached, an encrypted, unreadable or broken archive) is also listed in
:attr:`BannedResult.unchecked`: the message is then UNCHECKED, never clean, as
amavisd-new makes it (a zip of 1,000 dummy members and then ``evil.exe`` must not pass
as clean because the member budget ran out before ``evil.exe``).
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from email.utils import collapse_rfc2231_value
from typing import Any

from filterd.actions import parse_action
from filterd.content.message import Message, decode_header_value
from filterd.content.symbols import Symbol
from filterd.maps import LookupTable, open_table

log = logging.getLogger("filterd.content.banned")

UNDECIPHERABLE = "UNDECIPHERABLE"

#: Bytes of content looked at to sniff a type (an ISO 9660 signature sits at 32769).
SNIFF_BYTES = 32774


# -- content sniffing ---------------------------------------------------------------------

def sniff(data: bytes) -> list[str]:
    """Short file types of ``data`` from magic bytes, as amavisd-new names them.

    amavisd-new runs file(1) and maps its output to short types; these are the types
    its banned rules use, recognised from the same signatures file(1) uses. The
    result is empty for text and for anything unrecognised.
    """
    if data.startswith(b"MZ"):
        return _sniff_pe(data)
    if data.startswith(b"\x7fELF"):
        return ["elf"]
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return ["zip"]
    if data.startswith(b"Rar!\x1a\x07"):
        return ["rar"]
    if data.startswith(b"7z\xbc\xaf\x27\x1c"):
        return ["7z"]
    if data.startswith(b"%PDF-"):
        return ["pdf"]
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return ["doc", "ole"]
    if data.startswith(b"\x1f\x8b"):
        return ["gz"]
    if data.startswith(b"BZh"):
        return ["bz2"]
    if data.startswith(b"MSCF"):
        return ["cab"]
    if data.startswith(b"{\\rtf"):
        return ["rtf"]
    if data.startswith(b"L\x00\x00\x00\x01\x14\x02\x00"):
        return ["lnk"]
    if data.startswith(b"\x78\x9f\x3e\x22"):
        return ["tnef"]
    if data[2:5] == b"-lh" and data[6:7] == b"-":
        return ["lha"]
    if data[257:262] == b"ustar":
        return ["tar"]
    if data[32769:32774] == b"CD001":
        return ["iso"]
    return []


def _sniff_pe(data: bytes) -> list[str]:
    """DOS/Windows executables: ``exe`` and ``exe-ms``, plus ``dll`` for PE libraries."""
    types = ["exe", "exe-ms"]
    if len(data) >= 0x40:
        (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
        header = data[pe_offset:pe_offset + 24]
        if len(header) == 24 and header.startswith(b"PE\x00\x00"):
            (characteristics,) = struct.unpack_from("<H", header, 22)
            if characteristics & 0x2000:  # IMAGE_FILE_DLL
                types.append("dll")
    return types


# -- configuration and result ---------------------------------------------------------------

@dataclass(frozen=True)
class BannedChecks:
    """The banned tables (opened once) and the archive limits."""

    tables: tuple[LookupTable, ...]
    max_depth: int = 2
    max_members: int = 1000
    max_size: int = 20 * 1024 * 1024

    @classmethod
    def from_config(cls, cfg: Any) -> BannedChecks:
        return cls(
            tables=tuple(open_table(spec) for spec in cfg.get("banned_filename_maps")),
            max_depth=cfg.get("banned_archive_max_depth"),
            max_members=cfg.get("banned_archive_max_members"),
            max_size=cfg.get("banned_archive_max_size"),
        )


@dataclass
class BannedResult:
    """``names`` describes each banned part as amavisd-new logs it: the descriptors of
    every enclosing part, ``" | "``-separated (``multipart/mixed | application/zip,.zip,
    a.zip | .exe,.exe-ms,setup.exe``)."""

    banned: bool = False
    symbols: list[Symbol] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    """What was not looked into, and why (amavisd-new's UNCHECKED: over limits,
    encrypted, undecipherable); empty when every part and member was seen."""


# -- the part tree ------------------------------------------------------------------------

@dataclass
class Node:
    """One MIME part or archive member with its descriptors and children."""

    descriptors: list[str]
    children: list[Node] = field(default_factory=list)


class _Budget:
    """Limits shared by every archive of one message."""

    def __init__(self, checks: BannedChecks):
        self.members = checks.max_members
        self.bytes = checks.max_size


class _Builder:
    """Builds the descriptor tree of a message and notes defects as symbols, and what
    could not be inspected as ``unchecked`` reasons."""

    def __init__(self, checks: BannedChecks, result: BannedResult):
        self.checks = checks
        self.symbols = result.symbols
        self.unchecked = result.unchecked
        self.budget = _Budget(checks)
        self.limit_reported = False

    def _defect(self, name: str, description: str, evidence: str, unchecked: str | None = None) -> None:
        """A symbol; with ``unchecked``, also a reason (once each) why the message is UNCHECKED."""
        self.symbols.append(Symbol(name, 0.0, description, evidence[:200]))
        if unchecked is not None and unchecked not in self.unchecked:
            self.unchecked.append(unchecked)

    def _limit(self, evidence: str, reason: str) -> None:
        if not self.limit_reported:
            self.limit_reported = True
            self._defect("BANNED_ARCHIVE_LIMIT", "archive not fully inspected: limit reached", evidence,
                         reason)

    # -- MIME (Message.tree is cut to MAX_MIME_DEPTH levels, and banned_archive_max_depth is
    # at most MAX_ARCHIVE_DEPTH: these recursions, and _walk's, are bounded)
    def mime(self, part: EmailMessage) -> Node:
        node = Node(_declared(part))
        if part.is_multipart():  # multipart, or message/rfc822 holding a message
            node.children = [self.mime(child) for child in part.get_payload() if isinstance(child, EmailMessage)]
            return node
        try:
            data = part.get_payload(decode=True) or b""
        except Exception as exc:  # noqa: BLE001 - hostile input is reported, never raised
            self._defect("BANNED_MIME_DEFECT", "undecodable MIME part", str(exc), "undecodable MIME part")
            return node
        if not isinstance(data, bytes):
            return node
        types = sniff(data[:SNIFF_BYTES])
        node.descriptors.extend("." + t for t in types)
        if "zip" in types and self.checks.max_depth > 0:
            node.children = self.zip(data, 1, _label(node))
        return node

    # -- zip archives
    def zip(self, data: bytes, depth: int, where: str) -> list[Node]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
                struct.error, NotImplementedError, UnicodeDecodeError) as exc:
            self._defect("BANNED_ARCHIVE_DEFECT", "malformed zip archive", f"{where}: {exc}",
                         "malformed zip archive")
            return []
        children: list[Node] = []
        with archive:
            for info in infos:
                if self.budget.members <= 0:
                    self._limit(f"{where}: more than {self.checks.max_members} archive members",
                                f"more than {self.checks.max_members} archive members")
                    break
                self.budget.members -= 1
                children.append(self._member(archive, info, depth, where))
        return children

    def _member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, depth: int, where: str) -> Node:
        node = Node([info.filename])
        if info.is_dir():
            return node
        if info.flag_bits & 0x1:
            node.descriptors.append(UNDECIPHERABLE)
            self._defect("BANNED_ARCHIVE_ENCRYPTED", "encrypted archive member",
                         f"{where}: {info.filename}", "encrypted archive member")
            return node
        if self.budget.bytes <= 0:
            self._limit(f"{where}: {info.filename}: more than {self.checks.max_size} bytes decompressed",
                        f"more than {self.checks.max_size} bytes decompressed")
            return node
        want = min(SNIFF_BYTES, self.budget.bytes)
        try:
            with archive.open(info) as member:
                head = member.read(want)
                self.budget.bytes -= len(head)
                types = sniff(head)
                node.descriptors.extend("." + t for t in types)
                if "zip" in types:
                    node.children = self._nested(member, head, info, depth, where)
        except NotImplementedError as exc:  # a compression method zipfile cannot read
            node.descriptors.append(UNDECIPHERABLE)
            self._defect("BANNED_ARCHIVE_DEFECT", "unreadable archive member",
                         f"{where}: {info.filename}: {exc}", "unreadable archive member")
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError,
                struct.error) as exc:
            self._defect("BANNED_ARCHIVE_DEFECT", "corrupt archive member",
                         f"{where}: {info.filename}: {exc}", "corrupt archive member")
        return node

    def _nested(self, member: Any, head: bytes, info: zipfile.ZipInfo, depth: int, where: str) -> list[Node]:
        """Open a zip inside a zip, reading at most what the byte budget allows."""
        if depth >= self.checks.max_depth:
            self._defect("BANNED_ARCHIVE_LIMIT", "archive nested too deep to inspect",
                         f"{where} | {info.filename}",
                         f"archives nested deeper than {self.checks.max_depth} levels")
            return []
        too_big = f"more than {self.checks.max_size} bytes decompressed"
        if info.file_size > self.budget.bytes:
            self._limit(f"{where}: {info.filename}: {info.file_size} bytes", too_big)
            return []
        rest = member.read(self.budget.bytes + 1)  # the declared size may lie
        self.budget.bytes -= len(rest)
        if self.budget.bytes < 0:
            self._limit(f"{where}: {info.filename}: more than the byte budget", too_big)
            return []
        return self.zip(head + rest, depth + 1, f"{where} | {info.filename}")


def _declared(part: EmailMessage) -> list[str]:
    """The declared MIME type and the declared file names (both parameters, decoded)."""
    out: list[str] = []
    if part.get("Content-Type") is not None:
        out.append(part.get_content_type())
    for name in (_param(part, "filename", "content-disposition"), _param(part, "name", "content-type")):
        if name and name not in out:
            out.append(name)
    return out


def _param(part: EmailMessage, param: str, header: str) -> str | None:
    try:
        value = part.get_param(param, header=header)
        if value is None or isinstance(value, str) and not value:
            return None
        text = collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)
    except (ValueError, LookupError, TypeError, AttributeError):
        return None
    return decode_header_value(text.strip()) or None


def _label(node: Node) -> str:
    return ",".join(node.descriptors) or "?"


# -- the check ---------------------------------------------------------------------------

def _lookup(tables: tuple[LookupTable, ...], key: str) -> tuple[str, str] | None:
    for table in tables:
        value = table.lookup(key)
        if value is not None:
            return table.spec, value
    return None


def _decide(tables: tuple[LookupTable, ...], node: Node) -> tuple[bool, str, str, str] | None:
    """(banned, descriptor, spec, value) of the first decisive answer for ``node``."""
    for descriptor in node.descriptors:
        found = _lookup(tables, descriptor)
        if found is None:
            continue
        spec, value = found
        kind = parse_action(value).kind
        if kind == "DUNNO":
            continue
        return kind != "OK", descriptor, spec, value
    return None


def check_banned(checks: BannedChecks, msg: Message) -> BannedResult:
    """Look up every part and archive member of ``msg`` in the banned tables.

    Never raises for hostile input. A table that cannot answer now (MapTempError)
    propagates: the caller must defer rather than pass an unchecked message.
    """
    result = BannedResult()
    if not checks.tables:
        return result
    root = _Builder(checks, result).mime(msg.tree)
    _walk(checks.tables, root, [], result)
    result.banned = bool(result.names)
    return result


def _walk(tables: tuple[LookupTable, ...], node: Node, path: list[Node], result: BannedResult) -> None:
    path = path + [node]
    decision = _decide(tables, node)
    if decision is not None:
        banned, descriptor, spec, value = decision
        if banned:
            where = " | ".join(_label(n) for n in path)
            result.names.append(where)
            action = parse_action(value)
            result.symbols.append(Symbol("BANNED_FILENAME", 0.0, action.text or str(action),
                                         f"{descriptor} in ({where}) matched {spec}"[:300]))
            log.info("banned part (%s): %s matched %s => %s", where, descriptor, spec, value)
        return  # banned or allowed: nothing inside this part is looked at
    for child in node.children:
        _walk(tables, child, path, result)

