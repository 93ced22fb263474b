"""bench/quality.py runs end to end: corpus, folds, ``filterd learn`` and the pipeline.

It is the measurement issue 12's goals are judged by, so it must at least start: it
builds configurations, and a configuration needs the parameter table loaded first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.unit.bayes_corpus import make_message

REPO = Path(__file__).resolve().parents[2]


def test_quality_bench_runs_on_a_small_corpus(tmp_path: Path) -> None:
    for folder, spam in (("ham", False), ("hard_ham", False), ("spam", True)):
        target = tmp_path / "spamassassin" / folder
        target.mkdir(parents=True)
        for n in range(12 if folder != "hard_ham" else 4):
            (target / f"{n:05d}.eml").write_bytes(make_message(spam, n, seed=3))
    env = {**os.environ, "FILTERD_CORPUS": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "quality.py"), "--systems", "bayes,defaults-nosa", "--folds", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "filterd defaults-nosa" in result.stdout and "\nall " in result.stdout
