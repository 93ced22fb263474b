"""HTML rendering: what a reader sees, in linear time whatever the markup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from filterd.content.htmltext import defuse_markup, html_to_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("html, defused", [
    ("<p>a</p><br/>", "<p>a</p><br/>"),
    ("a < b", "a &lt; b"),
    ("<a <b>x</b>", "&lt;a <b>x</b>"),
    ("<p>end<", "<p>end&lt;"),
    ("<!-- a < b --><p>t</p>", "<!-- a < b --><p>t</p>"),
    ("<p>v</p><!-- never closed <a", "<p>v</p><!-- never closed <a-->"),
    ("no markup", "no markup"),
])
def test_defuse_escapes_only_what_cannot_be_a_tag(html: str, defused: str) -> None:
    assert defuse_markup(html) == defused


def test_rendering_is_unchanged_for_ordinary_markup() -> None:
    html = ("<html><head><style>p{}</style></head><body><p>Hello &amp; welcome</p>"
            "<!-- hidden words --><div>if a < b then</div><img alt='logo'><script>x<y</script></body></html>")
    assert html_to_text(html) == "Hello & welcome\n\nif a < b then\nlogo"  # as before the defusing


@pytest.mark.parametrize("unit", ["<a ", "<a b c d e ", "<a x='", "<a\n", "<a ==", "<!--"])
def test_tag_openings_that_never_close_render_in_linear_time(unit: str) -> None:
    """The stdlib parser took 75 s for 72 KB of "<a " (quadratic and worse): a message
    made of them held a worker for hours. A subprocess, so a hang is cut by the guard."""
    code = f"from filterd.content.htmltext import html_to_text; html_to_text({unit!r} * 300_000)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
