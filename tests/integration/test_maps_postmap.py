"""filterd's tables answer like Postfix's own ``postmap -q`` on the same files."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from filterd.maps.query import query_command

pytestmark = pytest.mark.integration

POSTMAP = shutil.which("postmap") or ("/usr/sbin/postmap" if os.path.exists("/usr/sbin/postmap") else None)

TABLES = {
    "texthash": (
        "Foo first\nfoo second\nbar  a b  \n  continued\n# c\n  # indented\nqux v\n#c\n"
        " more\nUser@Example.COM full\n.example.com dotted\n1.2.3 net\n2001:db8 v6\n"
    ),
    "regexp": (
        "/^foo(.*)@(.*)$/  got $1 at ${2} $$ end\n"
        "/^CASE$/i caseoff\n"
        "|^pi/pe| pipe\n"
        "if /@example\\.com$/\n"
        "if !/^admin@/\n"
        "/^(.*)@/ user $1\n"
        "endif\n"
        "/./ admin\n"
        "endif\n"
        "/^x(y)?z/\n  cont [$1]\n"
        "/(a)|(b)/ [$2]\n"
        "/\\<word\\>/ gnu-word\n"
        "/^[[:digit:]]+$/ digits\n"
        "!/^n/ negated\n"
    ),
    "cidr": (
        "192.168.1.1   one\n!10.0.0.0/8   not-ten\nif 10.0.0.0/8\n10.1.0.0/16   ten-one\n"
        "endif\n[2001:db8::1] v6-one\n2001:DB8::/32 v6-net\n10.2.3.4/32\n   cont\n"
        "IF !192.0.2.0/24\n0.0.0.0/0 outside\nENDIF\n"
    ),
}

KEYS = [
    "foo", "FOO", "bar", "qux", "user@example.com", "USER@EXAMPLE.COM", "sub.example.com",
    ".example.com", "1.2.3", "2001:db8", "foobar@Example.com", "case", "CASE", "pi/pe",
    "bob@example.com", "admin@example.com", "xz", "xyz", "a", "b", "a word here",
    "swordfish", "12345", "nope", "n", "192.168.1.1", "192.168.1.01", "10.1.2.3",
    "10.5.5.5", "2001:db8::1", "2001:0db8:0::1", "[2001:db8::1]", "2001:db8:1::5",
    "10.2.3.4", "::ffff:192.168.1.1", "192.0.2.9", "198.51.100.1", "garbage",
]


@pytest.fixture
def mail_config(tmp_path: Path) -> dict[str, str]:
    if POSTMAP is None:
        pytest.skip("postmap (Debian package postfix) is not installed")
    conf = tmp_path / "pfconf"
    conf.mkdir()
    (conf / "main.cf").write_text(
        "compatibility_level = 3.6\nmyhostname = localhost.localdomain\nmydomain = localdomain\n")
    age(conf / "main.cf")
    return {**os.environ, "MAIL_CONFIG": str(conf)}


def age(path: Path) -> None:
    """Postfix re-reads a file modified within the last second until it settles (about
    2 s); a fresh test file gets an older modification time so postmap answers at once."""
    old = time.time() - 60
    os.utime(path, (old, old))


def postmap(env: dict[str, str], spec: str, keys: list[str]) -> str:
    assert POSTMAP is not None
    proc = subprocess.run([POSTMAP, "-q", "-", spec], input="\n".join(keys) + "\n",
                          capture_output=True, text=True, env=env, timeout=30)
    return proc.stdout


def filterd(spec: str, keys: list[str], capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(keys) + "\n"))
    query_command(spec, ["-"])
    return capsys.readouterr().out


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_file_tables_match_postmap(kind: str, tmp_path: Path, mail_config: dict[str, str],
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / kind
    path.write_text(TABLES[kind])
    age(path)
    spec = f"{kind}:{path}"
    expected = postmap(mail_config, spec, KEYS)
    assert expected, "postmap found nothing: the comparison would be empty"
    assert filterd(spec, KEYS, capsys, monkeypatch) == expected


@pytest.mark.parametrize("spec", [
    "inline:{ k=v, { k2 = two words }, K3=x, dup=1, dup=2 }",
    "static:{ a b  c }",
    "regexp:{ {/^a(.)/ first $1}, { /./ second } }",
    "cidr:{ {10.0.0.0/8 ten}, {!10.0.0.0/8 other} }",
    "unionmap:{ inline:{k=1}, static:2 }",
])
def test_inline_tables_match_postmap(spec: str, mail_config: dict[str, str],
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ["k", "K2", "k3", "dup", "abc", "b", "10.1.1.1", "192.0.2.1", "x"]
    assert filterd(spec, keys, capsys, monkeypatch) == postmap(mail_config, spec, keys)
