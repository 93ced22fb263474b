"""The package's type hints are checked, not only written.

mypy runs over ``filterd`` with the settings in pyproject.toml (``[tool.mypy]``): a
hint that no longer matches the code (a value that may be None used as a string, a
service typed as ``object``) fails the suite here rather than surfacing as a crash on
some rare input.
"""

from __future__ import annotations

from pathlib import Path

from mypy import api

REPO = Path(__file__).resolve().parents[2]


def test_filterd_type_checks(tmp_path: Path) -> None:
    stdout, stderr, status = api.run([
        "--config-file", str(REPO / "pyproject.toml"),
        "--cache-dir", str(tmp_path / "mypy-cache"),
        str(REPO / "filterd"),
    ])
    assert status == 0, f"mypy found problems:\n{stdout}{stderr}"
