"""The hostile-message corpus (tests/data/hostile/) through the whole content pipeline.

The pipeline is built as ``filterd check`` and the content filter build it, from the
default configuration: Postfix checks, banned files, the shipped score rules, a Bayes
model (a tiny one, learned here, so the tokenizer runs) and the fixture's clamd where it
is installed. Every message must get a final verdict, never a tempfail: a 451 for a
message that fails the same way on every retry loops until the message expires. The
timeout is only a guard against a hang; the time each message took is printed (-s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.content.bayes.learn import learn_command
from filterd.content.message import Message
from filterd.restrict.transaction import Transaction
from filterd.content.pipeline import ContentPipeline
from tests.data.hostile.generate import EXPECT, corpus

pytestmark = pytest.mark.integration

#: Seconds one message may take before the test calls it a hang (they take 0-10 s here).
GUARD = 300.0
FINAL = ("pass", "reject", "discard", "quarantine", "hold")
CASES = corpus()

SPAM = b"From: a@spam.example\r\nSubject: cheap pills\r\n\r\nbuy cheap pills now http://pills.example/\r\n"
HAM = b"From: b@work.example\r\nSubject: meeting\r\n\r\nthe meeting notes are attached\r\n"


@pytest.fixture(scope="module")
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContentPipeline]:
    data = tmp_path_factory.mktemp("hostile")
    try:
        clamd = request.getfixturevalue("clamd_server")
        clamav = f"clamav_socket = {clamd.spec_unix}\nclamav_timeout = 60s\n"
    except pytest.skip.Exception:  # no clamd here: everything else still runs
        clamav = "clamav_socket =\n"
    cfg = Config.from_text(f"data_directory = {data}\n{clamav}bayes_min_spam_num = 1\nbayes_min_ham_num = 1\n")
    for kind, raw in (("spam", SPAM), ("ham", HAM)):
        (data / kind).mkdir()
        (data / kind / "1.eml").write_bytes(raw)
    assert learn_command(cfg, [str(data / "spam")], [str(data / "ham")]) == 0
    built = ContentPipeline.from_config(cfg)
    assert built.stages[-2:] == ["rules", "bayes"]
    yield built
    built.close()


@pytest.mark.parametrize("name", list(CASES))
async def test_every_hostile_message_gets_a_final_verdict(pipeline: ContentPipeline, name: str) -> None:
    raw = CASES[name]()
    msg = Message(raw, Transaction(sender="a@example.org", recipients=["b@example.com"], queue_id="4HOST1LE"))
    started = time.monotonic()
    verdict = await asyncio.wait_for(pipeline.scan(msg, "hostile"), GUARD)
    out = verdict.edits.apply(msg)  # what the content filter would pass on or quarantine
    took = time.monotonic() - started
    print(f"{name}: {len(raw)} bytes, {took:.2f} s, {verdict.action} {verdict.category}")
    assert verdict.action in FINAL, (verdict.action, verdict.reason)
    assert out.endswith(raw[msg.body_start:])  # the body goes out as it came in
    expected = EXPECT.get(name)
    if expected == "INFECTED" and pipeline.clamav is None:
        expected = "BANNED"  # no clamd: the banned name still blocks it
    if expected is not None:
        assert verdict.category == expected, verdict.reason
