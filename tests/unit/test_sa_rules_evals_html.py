"""SpamAssassin's HTML statistics evals (html_range, html_eval, html_tag_balance,
html_text_match, html_image_ratio, html_title_subject_ratio, html_test flags) and
multipart_alternative_difference, on crafted messages."""

from __future__ import annotations

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.evals_html import (
    alternative_difference,
    css_background_layers,
    html_stats,
    name_to_rgb,
)
from tests.unit.rulesets import load_rules

RULES = r"""
body EXTRA_CLOSE   eval:html_range('closed_extra_ratio', '0.09', 'inf')
body SIZE_HUGE     eval:html_range('max_size', '6', 'inf')
body OBFU          eval:html_range('obfuscation_ratio', '.05', '1.0')
body BADTAG        eval:html_range('bad_tag_ratio', '0.40', '1.00')
body NONELEM       eval:html_range('non_element_ratio', '0.30', '1.00')
body LEN_SHORT     eval:html_range('length', '0', '1024')
body LEN_384       eval:html_eval('length', '< 384')
body BAL_BODY      eval:html_tag_balance('body', '!= 0')
body BAL_CENTER    eval:html_tag_balance('center', '!= 0')
body LINK_IMAGE    eval:html_text_match('anchor', '<img>')
body SAVED_URL     eval:html_text_match('comment', '<!-- saved from url=\(\d{4}\)')
body TITLE_120     eval:html_text_match('title', '.{120}')
body IMG_RATIO     eval:html_image_ratio('0.000', '0.002')
body TITLE_DIFF    eval:html_title_subject_ratio('3.5')
body EMBEDS        eval:html_test('embeds')
body LOW_CONTRAST  eval:html_test('font_low_contrast')
body BAD_COLOR     eval:html_test('font_invalid_color')
body FACE_BAD      eval:html_test('font_face_bad')
body ALT_DIFF      eval:multipart_alternative_difference('99', '100')
body ALT_COUNT     eval:multipart_alternative_difference_count('3', '1')
body BAD_RANGE     eval:html_range('no_such_statistic', '0', '1')
body BAD_EXPR      eval:html_eval('length', 'system(1)')
body BAD_REGEX     eval:html_text_match('anchor', '(')
body BAD_TEXT      eval:html_text_match('body', 'x')
body BAD_TEST      eval:html_test('no_such_flag')
"""


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    return load_rules(tmp_path_factory, RULES, "t.cf")


def html_mail(html: str, subject: str = "hello") -> bytes:
    return (f"From: a@example.com\nTo: b@example.org\nSubject: {subject}\n"
            f"Content-Type: text/html\n\n{html}\n").encode()


def names(rs: RuleSet, raw: bytes) -> set[str]:
    return {s.name for s in rs.evaluate(Message(raw))}


def test_unusable_arguments_are_unsupported_not_errors(rs: RuleSet) -> None:
    assert set(rs.stats.unsupported_eval) == {
        "html_range('no_such_statistic', '0', '1')", "html_eval('length', 'system(1)')",
        "html_text_match('anchor', '(')", "html_text_match('body', 'x')", "html_test('no_such_flag')"}
    assert rs.stats.ok


def test_tidy_html_fires_only_length_rules(rs: RuleSet) -> None:
    html = "<html><head><title>hello</title></head><body><p>Plain words here.</p></body></html>"
    assert names(rs, html_mail(html)) == {"LEN_SHORT", "LEN_384"}


def test_spammy_html_statistics(rs: RuleSet) -> None:
    html = ("<html><body><center><font size=7>V<b>ia</b>gra</font></i></i></u>"
            '<a href="http://x.example/"><img src="a.gif" width="800" height="600"></a>'
            "<!-- saved from url=(0022)http://internet.e-mail -->"
            "<xyzzy>a</xyzzy><blah>b</blah><foo>c</foo><bar>d</bar></body>")
    got = names(rs, html_mail(html))
    assert {"EXTRA_CLOSE", "SIZE_HUGE", "OBFU", "NONELEM", "BAL_CENTER", "LINK_IMAGE",
            "SAVED_URL", "IMG_RATIO"} <= got
    assert "BAL_BODY" not in got  # </body> closed it


def test_statistics_values() -> None:
    s = html_stats('<p>a</p></b><zz>x</zz><font size="+4">big</font>', "a x big")
    assert (s.tags, s.elements, s.closed_extra) == (7, 5, 1)
    assert s.value("bad_tag_ratio") == pytest.approx(2 / 7)
    assert s.value("non_element_ratio") == pytest.approx(1 / 4)
    assert s.max_size == 7  # basefont 3 + 4
    assert s.non_space_len == 5
    assert html_stats("", "").value("closed_extra_ratio") is None  # no tags: no ratio


def test_title_and_subject(rs: RuleSet) -> None:
    long_title = "T" * 130
    got = names(rs, html_mail(f"<title>{long_title}</title><p>x</p>", subject="short one"))
    assert {"TITLE_120", "TITLE_DIFF"} <= got
    assert "TITLE_DIFF" not in names(rs, html_mail(f"<title>{long_title}</title>", subject="s" * 60))


def test_html_test_flags(rs: RuleSet) -> None:
    html = ('<body><font color="#fefefe">hidden words</font><font face="$$$">x</font>'
            '<span style="color: nonsense">y</span><embed src="x.swf"></body>')
    assert {"LOW_CONTRAST", "BAD_COLOR", "FACE_BAD", "EMBEDS"} <= names(rs, html_mail(html))
    ok = '<body><font face="Arial, Helvetica" color="navy">fine</font></body>'
    assert not {"LOW_CONTRAST", "BAD_COLOR", "FACE_BAD", "EMBEDS"} & names(rs, html_mail(ok))


def test_colors_follow_the_style_stack() -> None:
    dark_cell = ('<table><tr><td style="background-color:#000000"><font color="#010101">dark</font>'
                 "</td><td>fine</td></tr></table>")
    assert "font_low_contrast" in html_stats(dark_cell, "").tests
    closed = '<font color="white">x</font> visible'
    assert html_stats("<p>" + closed, "").tests == {"font_low_contrast"}  # white text only
    transparent = '<div style="background: url(x.png) #ffffff"><span style="color: transparent">t</span></div>'
    assert "font_low_contrast" in html_stats(transparent, "").tests
    # the bgcolor attribute is resolved but, as in SpamAssassin 4, does not set the background
    assert html_stats('<table bgcolor="black"><tr><td>text</td></tr></table>', "").tests == set()


@pytest.mark.parametrize("value, rgb", [
    ("Red", "#ff0000"), ("#fff", "#ffffff"), ("#12345", "#112233"), ("#1234567", "#123456"),
    ("rgb(10, 20, 300)", "#0a1412"), ("rgb(50%,0%,100%)", "#7f00ff"), ("nonsense", "invalid"),
    ("", "invalid"),
])
def test_name_to_rgb(value: str, rgb: str) -> None:
    assert name_to_rgb(value) == rgb


def test_css_background_layers_keep_functions_together() -> None:
    assert css_background_layers('url("a b.png") no-repeat, rgb(1, 2, 3) fixed') == [
        ['url("a b.png")', "no-repeat"], ["rgb(1, 2, 3)", "fixed"]]
    assert css_background_layers("") == []


@pytest.mark.parametrize("html", [
    "<", "<<<>>>", "<a href='", "<!--", "<![CDATA[", "<script>never closed", "&#xffffffff;",
    "<p " + "a=b " * 2000, "\x00 <b>\x7f</b>", "<font size=99999999999999999999>x</font>",
    '<img width="1%" height="-5">', '<font color="rgb(999999999999,,)">x</font>',
    '<div style="color:;background:(((;;">x</div>',
])
def test_malformed_html_never_raises(rs: RuleSet, html: str) -> None:
    names(rs, html_mail(html))
    html_stats(html, html)


def test_undecodable_html_bytes(rs: RuleSet) -> None:
    raw = html_mail("<b>x</b>").replace(b"<b>x", b"<b>\xed\xa0\x80\xff x")
    assert "LEN_384" in names(rs, raw)


def alternative(text: str, html: str, extra: str = "") -> bytes:
    return ("From: a@example.com\nTo: b@example.org\nSubject: s\nMIME-Version: 1.0\n"
            "Content-Type: multipart/alternative; boundary=XX\n\n"
            f"--XX\nContent-Type: text/plain\n\n{text}\n"
            f"--XX\nContent-Type: text/html\n\n{html}\n{extra}--XX--\n").encode()


def test_alternative_difference(rs: RuleSet) -> None:
    decoy = alternative("hello there friend", "<p>buy cheap pills now</p>")
    assert alternative_difference(Message(decoy)).percent == 100.0
    assert "ALT_DIFF" in names(rs, decoy)
    same = alternative("buy cheap pills now", "<p>buy cheap pills now</p>")
    assert alternative_difference(Message(same)).percent == 0.0
    assert "ALT_DIFF" not in names(rs, same)


def test_alternative_difference_image_only_html_and_word_counts(rs: RuleSet) -> None:
    image = alternative("some text", '<img src="x.gif">')
    assert alternative_difference(Message(image)).percent == 100.0  # the image is unsaid
    wordy = alternative("one two three four five six seven eight nine", "<p>one two</p>")
    d = alternative_difference(Message(wordy))
    assert (d.html_words, d.text_words) == (2, 9)
    assert "ALT_COUNT" in names(rs, wordy)


def test_alternative_difference_ignores_meeting_requests_and_plain_mail() -> None:
    meeting = (b"From: a@example.com\nMIME-Version: 1.0\n"
               b"Content-Type: multipart/alternative; boundary=XX\n\n"
               b"--XX\nContent-Type: text/html\n\n<p>meet</p>\n"
               b"--XX\nContent-Type: text/calendar\n\nBEGIN:VCALENDAR\n--XX--\n")
    assert alternative_difference(Message(meeting)).percent == 0.0
    assert alternative_difference(Message(b"From: a@example.com\n\nplain\n")).percent == 0.0


@pytest.mark.parametrize("rendered", ["", " \t\n", "a b\u00a0c\u2003d\n\ne", "日本 語"])
def test_non_space_length_counts_what_is_not_white_space(rendered: str) -> None:
    assert html_stats("<p>x</p>", rendered).non_space_len == sum(1 for ch in rendered if not ch.isspace())


def test_text_of_only_nbsp_and_spaces_is_not_checked_for_colors() -> None:
    invisible = '<body bgcolor="white" text="white">'
    assert html_stats(invisible + "&nbsp; \u00a0\n</body>", "").tests == set()
    assert html_stats(invisible + "&nbsp;x</body>", "x").tests == {"font_low_contrast"}
    assert html_stats('<font color="#ffffff">&nbsp;x</font>', "x").tests == {"font_low_contrast"}
    assert html_stats('<font color="#ffffff">&nbsp; </font>', "").tests == set()


def test_office_namespace_tags_are_elements() -> None:
    s = html_stats("<o:p>x</o:p><st1:place>y</st1:place><q:x>z</q:x>", "x y z")
    assert (s.tags, s.elements) == (6, 4)
