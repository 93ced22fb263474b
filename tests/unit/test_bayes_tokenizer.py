"""The Bayes tokenizer on crafted messages: headers, body words, URIs, HTML, MIME, 8-bit."""

from __future__ import annotations

import pytest

from filterd.content.bayes import tokenizer
from filterd.content.bayes.tokenizer import (
    MAX_TOKEN_LENGTH,
    tokenize,
    word_tokens,
    words,
)
from filterd.content.message import Message

PLAIN = b"""Received: from relay.example.net (relay.example.net [10.1.2.3]) by mx.example.com
\twith ESMTP id 4AB12CD34; Mon, 7 Oct 2002 10:00:00 +0100
Received: from spamhost.bad.example (unknown [192.0.2.77]) by relay.example.net
\twith SMTP id 99XYZ; Mon, 7 Oct 2002 09:59:00 +0100
From: "Prize Office" <winner99@lotto.bad.example>
To: Bob <bob@example.com>
Reply-To: claims@elsewhere.example
Subject: You WON $1,000,000!
Date: Mon, 7 Oct 2002 09:58:00 +0100
Message-ID: <ABC123def@mailer.bad.example>
X-Mailer: MassMailer Pro 5.1
X-Spam-Status: No, hits=0.0
List-Id: <announce.lists.example.org>
Content-Type: text/plain; charset="us-ascii"

Dear Friend, CLICK here... to claim your prize at http://www.lotto.bad.example/claim/now?id=42
Supercalifragilisticexpialidocious offer.
"""


def test_header_tokens_are_prefixed_by_field() -> None:
    toks = set(tokenize(Message(PLAIN)))
    assert "H*F:D*lotto.bad.example" in toks and "H*F:D*bad.example" in toks
    assert "H*F:N*Prize" in toks
    assert "H*T:U*bob" in toks and "H*T:D*example.com" in toks
    assert "H*R:D*elsewhere.example" in toks
    assert "H*s:WON" in toks
    assert "H*M:mailer.bad.example" in toks and "H*M:shape:A9a" in toks
    assert "H*x:MassMailer" in toks


def test_address_digits_are_folded() -> None:
    toks = set(tokenize(Message(PLAIN)))
    assert "H*F:U*winner99" in toks  # "winner99" -> digits folded to 9 keep it stable
    msg = Message(b"From: user12345@example.com\n\nbody\n")
    assert "H*F:U*user99999" in set(tokenize(msg))


def test_ignored_headers_give_no_tokens() -> None:
    toks = tokenize(Message(PLAIN))
    assert not any(t.startswith(("HDate:", "HX-Spam-Status:", "HList-Id:")) for t in toks)
    assert not any("2002" in t for t in toks if t.startswith("H"))


def test_received_uses_earliest_hops_without_ids_or_dates() -> None:
    toks = set(tokenize(Message(PLAIN)))
    assert "H*r:bad.example" in toks and "H*r:ip*192.0.2" in toks
    assert "H*r:ip*10.1.2" in toks  # second-earliest hop
    assert not any(t.startswith("H*r:") and ("99xyz" in t or "4ab12cd34" in t) for t in toks)


def test_received_uses_later_hops_up_to_a_bound() -> None:
    hops = [f"Received: from hop{i}.example.org ([192.0.{i}.1]) by x\n".encode() for i in range(40)]
    # the first field is the latest hop, the last one the earliest
    toks = set(tokenize(Message(b"".join(hops) + b"Subject: x\n\nbody\n")))
    earliest = [f"H*r:ip*192.0.{i}" for i in range(39, 39 - tokenizer.MAX_RECEIVED, -1)]
    assert set(earliest) <= toks
    assert "H*r:ip*192.0.0" not in toks  # beyond the bound: not tokenized


def test_body_words_case_numbers_and_long_tokens() -> None:
    toks = set(tokenize(Message(PLAIN)))
    assert {"CLICK", "click", "Dear", "dear", "prize"} <= toks
    assert {"$9,999,999!", "9999999"} <= toks  # "$1,000,000!" folded to its shape
    assert "sk:Superca" in toks
    assert all(len(t) <= 40 for t in toks)


def test_words_split_ellipses_and_trim_punctuation() -> None:
    assert words("here...now 'quoted'", decompose=False) == ["here", "now", "quoted"]
    assert words("ab a", decompose=False) == []
    long = "x" * (MAX_TOKEN_LENGTH + 1)
    assert words(long, decompose=False) == ["sk:xxxxxxx"]


def test_words_decompose_each_distinct_word_once() -> None:
    assert words("win win win") == ["win"]
    assert set(words("Win win Win! WIN 2002 win")) == {"Win", "win", "Win!", "win!", "WIN", "9999"}
    # non-ASCII: digits of any script fold to 9, and lower-casing "İ" adds a combining
    # dot that the punctuation-free variant drops
    assert set(words("BİLGİSAYAR ١٢٣x")) == {
        "BİLGİSAYAR", "bi̇lgi̇sayar", "bilgisayar", "999x"}


def test_uri_tokens() -> None:
    toks = set(tokenize(Message(PLAIN)))
    assert {"U:s:http", "U:www.lotto.bad.example", "U:bad.example", "UP:claim", "UP:now"} <= toks


HTML = b"""From: a@example.com
Subject: html
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/html; charset=iso-8859-1

<html><body><font color="red" size=5>Buy <b>now</b></font>
<a href="http://shop.example.biz/x">here</a><img src="cid:1" width=1></body></html>
--b1
Content-Type: application/octet-stream; name="invoice.exe"
Content-Disposition: attachment; filename="invoice.exe"
Content-Transfer-Encoding: base64

TVqQAAMAAAAEAAAA
--b1--
"""


def test_html_mime_and_attachment_tokens() -> None:
    toks = set(tokenize(Message(HTML)))
    assert {"html:font", "html:font.color", "html:font.size", "html:a.href", "html:img.width"} <= toks
    assert {"MIME:text/html", "MIME:cs:iso-8859-1", "ATT:application/octet-stream", "ATT:ext:exe"} <= toks
    assert "U:shop.example.biz" in toks
    assert "Buy" in toks and "buy" in toks
    assert any(t.startswith("H*ct:b:") for t in toks)


def test_8bit_headers_and_cjk_text() -> None:
    raw = ("From: caf\u00e9@example.com\nSubject: \u4f60\u597d\u4e16\u754c\u4f60\u597d\u4e16\u754c"
           "\u4f60\u597d\u4e16\u754c\u4f60\u597d\u4e16\u754c\nContent-Type: text/plain; charset=utf-8\n\n"
           "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3088\u65e5\u672c\u8a9e\u306e\n").encode()
    latin1 = b"From: x@example.com\nX-Note: caf\xe9 au lait\n\nbody text\n"
    toks = set(tokenize(Message(raw)))
    assert "H*F:8bit" in toks
    assert {"u8:\u65e5", "H*s:u8:\u4f60"} <= toks  # CJK runs become per-character tokens
    toks2 = tokenize(Message(latin1))
    assert "HX-Note:8bit" in toks2
    assert "HX-Note:caf\u00e9" in toks2  # raw 8-bit byte kept as a stable Latin-1 character
    for t in toks2:
        t.encode("utf-8")  # no surrogates escape to the hasher


def test_tokens_are_unique_and_broken_input_does_not_raise() -> None:
    toks = tokenize(Message(PLAIN))
    assert len(toks) == len(set(toks))
    for raw in (b"", b"\n\n", b"garbage without header\n", b"Content-Type: multipart/mixed\n\nno boundary",
                b"Message-ID: <@>\nFrom: <>\nTo: ,,,\nContent-Type: text/plain; boundary=\n\n\xff\xfe"):
        tokenize(Message(raw))
    assert "MIME:defects" in tokenize(Message(b"garbage without header\n\nx\n"))


# -- per-word tokens and their cache ---------------------------------------------------
def test_word_tokens_of_single_words() -> None:
    assert word_tokens("Hello") == ("hello", "Hello")
    assert word_tokens("hello") == ("hello",)
    assert word_tokens("$1,299!") == ("9999", "$9,999!")
    assert word_tokens("FREE!!", decompose=False) == ("FREE!!",)
    assert word_tokens("..ab..") == ()  # two characters once trimmed
    assert word_tokens("Supercalifragilistic") == ("sk:Superca",)
    assert word_tokens("日本語") == ("u8:日", "u8:本", "u8:語", "u8:日本", "u8:本語")


def test_cjk_pairs_do_not_join_characters_across_other_text() -> None:
    # "日x本": the two characters are not neighbours, so no pair joins them
    assert word_tokens("日x本") == ("u8:日", "u8:本")
    assert "u8:本語" in words("テスト 本語です")


def test_words_are_the_same_from_a_cold_and_a_warm_cache() -> None:
    text = "Dear Friend, CLICK here... to claim-- your $1,000,000 PRIZE now 日本 İstanbul"
    for cache in tokenizer._WORD_CACHE:
        cache.clear()
    cold = (words(text), words(text, "H*s:", False))
    assert (words(text), words(text, "H*s:", False)) == cold
    assert "H*s:PRIZE" in cold[1] and "prize" in cold[0] and "claim" in cold[0]


def test_word_cache_is_emptied_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer, "WORD_CACHE_SIZE", 3)
    monkeypatch.setattr(tokenizer, "_WORD_CACHE", ({}, {}))
    assert words("alpha beta gamma delta epsilon") == ["alpha", "beta", "gamma", "delta", "epsilon"]
    assert len(tokenizer._WORD_CACHE[True]) <= 3


def test_address_tokens_are_remembered_unchanged() -> None:
    first = tokenizer._address_tokens('"Prize Office" <winner99@lotto.bad.example>', "H*F:")
    assert tokenizer._address_tokens('"Prize Office" <winner99@lotto.bad.example>', "H*F:") == first
    assert "H*F:U*winner99" in first and "H*F:N*Prize" in first
    for value in ("not an address ((", "a@b.example, Carol <c@d.example>", ""):
        assert tokenizer._address_tokens(value, "H*T:") == tuple(tokenizer._parse_address_tokens(value, "H*T:"))


def test_long_words_are_tokenized_but_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every distinct word was kept, whatever its length, so a stream of messages
    with long unbroken runs (base64 in a body, a hostile Received field) made the caches
    hold up to WORD_CACHE_SIZE times the largest body."""
    monkeypatch.setattr(tokenizer, "_WORD_CACHE", ({}, {}))
    tokenizer._remembered_received_word.cache_clear()
    long_word = "x" * 100_000
    tokens = words(f"short {long_word}")
    assert tokens[0] == "short" and len(tokens) > 1  # the long word still gives a token
    assert list(tokenizer._WORD_CACHE[True]) == ["short"]
    assert tokenizer._received_tokens(f"from {long_word}.example")[1:]  # tokens of the long word
    assert tokenizer._remembered_received_word.cache_info().currsize == 1  # "from" only
