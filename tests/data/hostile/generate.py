"""The hostile-message corpus: the small cases are the ``*.eml`` files beside this one, the
big and binary ones are made here (megabytes stay out of git; EICAR is assembled at run time
so no scanner flags the source tree).

Every message must get a final verdict from the content pipeline (pass, tag, quarantine,
hold, reject or discard; never a tempfail that Postfix would retry until the message
expires) in bounded time and memory. ``EXPECT`` names the category a case must end in
where the case is about one (a reached limit is UNCHECKED, never CLEAN).

Run as a script to write the generated cases into a directory, e.g. for ``filterd check``::

    python3 tests/data/hostile/generate.py /tmp/hostile
"""

from __future__ import annotations

import base64
import io
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEAD = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"


def _attachment(name: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    """A multipart/mixed message with one base64 attachment."""
    return (HEAD + b'Content-Type: multipart/mixed; boundary="h"\r\n\r\n--h\r\nContent-Type: text/plain\r\n\r\n'
            b"see attached\r\n--h\r\n"
            + f'Content-Type: {ctype}; name="{name}"\r\nContent-Disposition: attachment; filename="{name}"\r\n'.encode()
            + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--h--\r\n")


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


EXE = b"MZ" + b"\x90" * 62 + b"This program cannot be run in DOS mode" + b"\0" * 200


def eicar() -> bytes:
    """The 68-byte EICAR test file, assembled here so this file is not itself flagged."""
    return (r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR" + r"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*").encode()


# -- nesting --------------------------------------------------------------------------------

def deep_multipart(levels: int = 1000) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels))
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(levels)))
    return HEAD + opening + b"Content-Type: text/plain\r\n\r\nthe leaf\r\n" + closing


def deep_rfc822(levels: int = 1000) -> bytes:
    return HEAD + b"Content-Type: message/rfc822\r\n\r\nSubject: level\r\n" * levels + b"\r\nthe leaf\r\n"


def deep_digest(levels: int = 1000) -> bytes:
    """multipart/digest parts default to message/rfc822: two levels per boundary, no header."""
    opening = b"".join(b'Content-Type: multipart/digest; boundary="d%d"\r\n\r\n--d%d\r\n\r\n' % (i, i)
                       for i in range(levels))
    return HEAD + opening + b"Subject: leaf\r\n\r\nthe leaf\r\n"


def deep_multipart_exe(levels: int = 30) -> bytes:
    """A banned executable below the nesting limit: not seen, so UNCHECKED, not CLEAN."""
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels))
    return (HEAD + opening + b'Content-Type: application/octet-stream; name="evil.exe"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(EXE).replace(b"\n", b"\r\n"))


# -- many parts, headers, lines ---------------------------------------------------------------

def parts_100k() -> bytes:
    body = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(100_000))
    return HEAD + b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n' + body + b"--p--\r\n"


def attachments_2000() -> bytes:
    """2,000 named attachments: a banned-table lookup each, and one banned name at the end."""
    names = [f"report{i}.pdf" for i in range(1999)] + ["invoice.pdf.exe"]
    body = b"".join(f'--a\r\nContent-Type: application/pdf; name="{n}"\r\n\r\n%PDF-1.4\r\n'.encode() for n in names)
    return HEAD + b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n' + body + b"--a--\r\n"


def header_line_5mb() -> bytes:
    return b"From: a@example.org\r\nSubject: " + b"A" * 5_000_000 + b"\r\n\r\nbody\r\n"


def headers_200k() -> bytes:
    return b"".join(b"X-H%d: value %d\r\n" % (i, i) for i in range(200_000)) + b"\r\nbody\r\n"


def header_folds_1m() -> bytes:
    """One header of a million continuation lines (joining them one by one was quadratic)."""
    return b"From: a@example.org\r\nSubject: start" + b"\r\n x" * 1_000_000 + b"\r\n\r\nbody\r\n"


def received_10k() -> bytes:
    hops = b"".join(b"Received: from h%d.example (h%d.example [192.0.2.%d]) by mx.example with ESMTP id X%d;"
                    b" Sat, 1 Jan 2000 00:00:00 +0000\r\n" % (i, i, i % 250 + 1, i) for i in range(10_000))
    return hops + HEAD + b"\r\nbody\r\n"


def recipients_100k() -> bytes:
    to = b", ".join(b"user%d@example%d.com" % (i, i % 100) for i in range(100_000))
    return b"From: a@example.org\r\nTo: " + to + b"\r\nCc: " + to + b"\r\nSubject: x\r\n\r\nbody\r\n"


def encoded_words_100k() -> bytes:
    return b"From: a@example.org\r\nSubject: " + b" ".join([b"=?utf-8?b?YQ==?="] * 100_000) + b"\r\n\r\nbody\r\n"


def body_line_10mb() -> bytes:
    return HEAD + b"\r\n" + b"x" * 10_000_000


def uris_100k() -> bytes:
    return HEAD + b"\r\n" + b"".join(b"http://host%d.example/path?q=%d\r\n" % (i, i) for i in range(100_000))


def nul_1mb() -> bytes:
    return HEAD + b"\r\n" + b"\0" * 1_000_000


def base64_garbage_5mb() -> bytes:
    return (HEAD + b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b"!!@@##$$%%^^&&**(())\r\n" * 250_000)


# -- HTML -------------------------------------------------------------------------------------

def _html(body: bytes) -> bytes:
    return HEAD + b"Content-Type: text/html\r\n\r\n" + body


def html_nested_100k() -> bytes:
    return _html(b"<div>" * 100_000 + b"deep text" + b"</div>" * 100_000)


def html_lt_1m() -> bytes:
    return _html(b"<" * 1_000_000)


def html_unclosed_comment() -> bytes:
    return _html(b"<p>visible</p><!--" + b"hidden <a href=http://x.example/>x</a> " * 100_000)


def html_tag_openings_300k() -> bytes:
    """Tags that never close: quadratic and worse in html.parser (72 KB took 75 s)."""
    return _html(b"<a " * 300_000)


def html_attributes_100k() -> bytes:
    return _html(b"<a " + b" ".join(b'href%d="http://h%d.example/"' % (i, i) for i in range(100_000)) + b">x</a>")


# -- archives ---------------------------------------------------------------------------------

def zip_1000_dummies_then_exe() -> bytes:
    """The issue's bypass: the member budget runs out just before evil.exe."""
    return _attachment("files.zip", _zip({f"dummy{i}.txt": b"x" for i in range(1000)} | {"evil.exe": EXE}),
                       "application/zip")


def zip_bomb() -> bytes:
    """1 GB of zeros in one member (about 1 MB compressed): only its head is ever read."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("zeros.bin", "w", force_zip64=True) as member:
        chunk = b"\0" * (1 << 20)
        for _ in range(1024):
            member.write(chunk)
    return _attachment("bomb.zip", buf.getvalue(), "application/zip")


def zip_nested_10() -> bytes:
    data = _zip({"evil.exe": EXE})
    for level in range(10):
        data = _zip({f"level{level}.zip": data})
    return _attachment("nested.zip", data, "application/zip")


def zip_50k_members() -> bytes:
    return _attachment("many.zip", _zip({f"m{i}": b"" for i in range(50_000)}, zipfile.ZIP_STORED), "application/zip")


def zip_encrypted() -> bytes:
    data = bytearray(_zip({"secret.doc": b"whatever"}))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            (flags,) = struct.unpack_from("<H", data, at + flag_offset)
            struct.pack_into("<H", data, at + flag_offset, flags | 1)
            at = data.find(signature, at + 4)
    return _attachment("locked.zip", bytes(data), "application/zip")


def zip_truncated() -> bytes:
    return _attachment("broken.zip", _zip({"a.txt": b"hello world" * 1000, "b.exe": EXE})[:-40], "application/zip")


def eicar_named_eicar_com() -> bytes:
    """A virus with a banned name: INFECTED (with clamd), BANNED without it."""
    return _attachment("eicar.com", eicar())


#: name -> generator of the big and binary cases.
GENERATED: dict[str, Callable[[], bytes]] = {
    "deep-multipart-1000": deep_multipart,
    "deep-multipart-10000": lambda: deep_multipart(10_000),
    "deep-rfc822-1000": deep_rfc822,
    "deep-digest-1000": deep_digest,
    "deep-multipart-exe": deep_multipart_exe,
    "parts-100k": parts_100k,
    "attachments-2000": attachments_2000,
    "header-line-5mb": header_line_5mb,
    "headers-200k": headers_200k,
    "header-folds-1m": header_folds_1m,
    "received-10k": received_10k,
    "recipients-100k": recipients_100k,
    "encoded-words-100k": encoded_words_100k,
    "body-line-10mb": body_line_10mb,
    "uris-100k": uris_100k,
    "nul-1mb": nul_1mb,
    "base64-garbage-5mb": base64_garbage_5mb,
    "html-nested-100k": html_nested_100k,
    "html-lt-1m": html_lt_1m,
    "html-unclosed-comment": html_unclosed_comment,
    "html-attributes-100k": html_attributes_100k,
    "html-tag-openings-300k": html_tag_openings_300k,
    "zip-1000-dummies-then-exe": zip_1000_dummies_then_exe,
    "zip-bomb-1gb": zip_bomb,
    "zip-nested-10": zip_nested_10,
    "zip-50k-members": zip_50k_members,
    "zip-encrypted": zip_encrypted,
    "zip-truncated": zip_truncated,
    "eicar-named-eicar.com": eicar_named_eicar_com,
}

#: The category a case must end in, where the case is about one (with the default
#: configuration; INFECTED cases need clamd and are BANNED without it).
EXPECT: dict[str, str] = {
    "deep-multipart-1000": "UNCHECKED",
    "deep-multipart-10000": "UNCHECKED",
    "deep-rfc822-1000": "UNCHECKED",
    "deep-digest-1000": "UNCHECKED",
    "deep-multipart-exe": "UNCHECKED",
    "parts-100k": "UNCHECKED",
    "attachments-2000": "BANNED",
    "zip-1000-dummies-then-exe": "UNCHECKED",
    "zip-nested-10": "UNCHECKED",
    "zip-50k-members": "UNCHECKED",
    "zip-encrypted": "UNCHECKED",
    "zip-truncated": "UNCHECKED",
    "eicar-named-eicar.com": "INFECTED",
}


def corpus() -> dict[str, Callable[[], bytes]]:
    """Every case by name: the ``*.eml`` files here, then the generated ones."""
    cases: dict[str, Callable[[], bytes]] = {}
    for path in sorted(HERE.glob("*.eml")):
        cases[path.stem] = path.read_bytes
    cases.update(GENERATED)
    return cases


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIRECTORY", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, make in GENERATED.items():
        (out / f"{name}.eml").write_bytes(make())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
