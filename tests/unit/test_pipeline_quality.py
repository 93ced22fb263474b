"""quality_scorer: the blocking scorer bench/quality.py measures the real pipeline with."""

from __future__ import annotations

from pathlib import Path

from filterd.config import Config
from filterd.content.message import Message
from filterd.content.pipeline import quality_scorer

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def test_scores_through_the_real_pipeline_on_one_loop(tmp_path: Path) -> None:
    cfg = Config.from_text(f"data_directory = {tmp_path}\nclamav_socket =\nrules_extra_directories =\n")
    with quality_scorer(cfg) as score:
        clean = score(Message(b"From: a@example.org\nTo: b@example.com\nSubject: lunch\nDate: Mon, 2 Sep 2002"
                              b" 10:00:00 +0000\nMessage-Id: <1@example.org>\n\nSee you at noon.\n"))
        spam = score(Message(b"From: a@example.org\nTo: b@example.com\nSubject: test\n\n" + GTUBE + b"\n"))
        assert isinstance(clean, float) and clean < 2.0
        assert spam >= 1000.0  # GTUBE, from the shipped rules
        # the same scorer keeps working call after call (one persistent event loop)
        assert score(Message(b"")) == score(Message(b""))


def test_a_blocked_message_scores_zero_like_the_verdict(tmp_path: Path) -> None:
    # a Postfix header_checks REJECT ends the scan before the score rules, as in the server
    checks = tmp_path / "header_checks"
    checks.write_text("/^Subject: reject me/ REJECT\n")
    cfg = Config.from_text(f"data_directory = {tmp_path}\nclamav_socket =\nrules_extra_directories =\nheader_checks = regexp:{checks}\n")
    with quality_scorer(cfg) as score:
        assert score(Message(b"Subject: reject me\n\n" + GTUBE + b"\n")) == 0.0
