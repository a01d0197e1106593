import unicodedata

import polars as pl
import pytest

from ttds.data.text import clean_text, clean_text_expr

HARD_CASES = [
    "Salt &amp;amp; Pepper",
    "Salt &amp; Pepper",
    "Salt & Pepper",
    "&amp;amp;amp;amp;lt;b&amp;gt;",
    unicodedata.normalize("NFD", "Crème Brûlée Café"),
    "Crème Brûlée Café",
    "e&#x301;clair",
    "&#769;",
    "&hellip\u037e",  # U+037E becomes ";" under NFC, which completes the entity
    "  tabs\tand\nnew\r\nlines  ",
    "no\u00a0break\u3000ideographic\u2003em",
    "control\u001cseparator\u001fchars",
    "Cable 3/8 in <10 ft>",
    "&notanentity; &amp",
    "\u0958 composition exclusion",
    "",
    "   ",
    None,
]


def test_double_escaped_ampersand_matches_plain_form():
    assert clean_text("Salt &amp;amp; Pepper") == "Salt & Pepper"
    assert clean_text("Salt &amp; Pepper") == "Salt & Pepper"
    assert clean_text("Salt & Pepper") == "Salt & Pepper"


def test_nfd_title_matches_nfc_title():
    decomposed = unicodedata.normalize("NFD", "Crème Brûlée")
    assert decomposed != "Crème Brûlée"
    assert clean_text(decomposed) == "Crème Brûlée"


@pytest.mark.parametrize("text", HARD_CASES)
def test_cleaning_twice_equals_once(text):
    once = clean_text(text)
    assert clean_text(once) == once


def test_expression_matches_function_on_hard_cases():
    frame = pl.DataFrame({"text": HARD_CASES}, schema={"text": pl.Utf8})
    from_expression = frame.select(clean_text_expr("text"))["text"].to_list()
    for text, cleaned in zip(HARD_CASES, from_expression, strict=True):
        assert cleaned == clean_text(text), f"input {text!r}"


def test_expression_works_inside_list_eval():
    frame = pl.DataFrame({"categories": [["Caf&eacute;", unicodedata.normalize("NFD", "Café")], None]})
    cleaned = frame.select(pl.col("categories").list.eval(clean_text_expr(pl.element())))["categories"].to_list()
    assert cleaned[0] == ["Café", "Café"]
    assert cleaned[1] is None


def test_whitespace_collapses_and_strips():
    assert clean_text("  a \t\n b\u00a0\u00a0c  ") == "a b c"
    assert clean_text("   ") == ""


def test_none_stays_none():
    assert clean_text(None) is None


def test_angle_brackets_are_kept():
    assert clean_text("Cable 3/8 in <10 ft>") == "Cable 3/8 in <10 ft>"
    assert clean_text("&lt;b&gt;bold&lt;/b&gt;") == "<b>bold</b>"


def test_entity_completed_by_normalisation_is_unescaped():
    assert clean_text("&hellip\u037e") == "\u2026"
