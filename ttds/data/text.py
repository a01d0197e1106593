"""Text normalisation for item and user text, as a Python function and as an identical polars expression.

Cleaning steps, in order:
1. Unicode NFC.
2. HTML entities are unescaped (``html.unescape``) and the result is put back in NFC, repeatedly, until the
   text stops changing. Scraped catalogues escape some fields twice (``&amp;amp;``), so one round is not
   enough, and stopping only at a fixed point is what makes ``clean_text(clean_text(x)) == clean_text(x)``.
   NFC runs inside the loop because it can create entity text: U+037E (Greek question mark) becomes ``;``.
3. Every run of whitespace (``WHITESPACE_PATTERN``) becomes one space, and leading and trailing spaces go.

Tags are NOT stripped. Real titles contain ``<`` and ``>`` ("Cable 3/8 in <10 ft>"), a regex tag stripper would
delete such text, and the encoders read markup fragments without harm. A missing value stays None, and text that
is only whitespace becomes "" (callers treat "" as missing).
"""

from __future__ import annotations

import html
import re
import unicodedata

import polars as pl

# An explicit class rather than `\s`, because Python's `\s` (str.isspace) and the Rust regex `\s` used by polars
# disagree on the control characters U+001C..U+001F. Both engines read this class the same way.
WHITESPACE_PATTERN = "[\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
_WHITESPACE = re.compile(WHITESPACE_PATTERN)

# Each unescape round that changes the text shortens it, so the loop ends by itself. The bound is only a guard
# in case a Unicode corner case breaks that argument.
MAX_UNESCAPE_ROUNDS = 64


def _unescape_to_fixed_point(text: str) -> str:
    """Unescape HTML entities and re-apply NFC until the text stops changing. ``text`` must already be NFC."""
    for _ in range(MAX_UNESCAPE_ROUNDS):
        unescaped = unicodedata.normalize("NFC", html.unescape(text))
        if unescaped == text:
            break
        text = unescaped
    return text


def clean_text(text: str | None) -> str | None:
    """Normalise one string: NFC, HTML entities unescaped to a fixed point, whitespace collapsed and stripped."""
    if text is None:
        return None
    text = unicodedata.normalize("NFC", text)
    if "&" in text:
        text = _unescape_to_fixed_point(text)
    return _WHITESPACE.sub(" ", text).strip(" ")


def _unescape_series(values: pl.Series) -> pl.Series:
    # Only distinct strings that contain "&" reach Python; the rest of the column stays in polars.
    normalised = values.str.normalize("NFC")
    escaped = normalised.filter(normalised.str.contains("&", literal=True).fill_null(False)).unique()
    if escaped.len() == 0:
        return normalised

    originals = escaped.to_list()
    replacements = [_unescape_to_fixed_point(text) for text in originals]
    return normalised.replace(originals, replacements)


def clean_text_expr(column: str | pl.Expr) -> pl.Expr:
    """Build the polars expression version of ``clean_text`` for a string column, equal to it row by row."""
    expr = pl.col(column) if isinstance(column, str) else column
    return (
        expr.map_batches(_unescape_series, return_dtype=pl.Utf8, is_elementwise=True)
        .str.replace_all(WHITESPACE_PATTERN, " ")
        .str.strip_chars(" ")
    )
