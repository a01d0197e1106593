"""Item and user texts rendered from their fields by templates in config.

A template is a ``str.format``-style string such as ``"{title}. {categories}. {brand}. {description}"``.
A field is missing when its value is null, blank, or a list with no non-blank element. A missing field is
dropped together with the separator in front of it (the leading punctuation and spaces of the literal text
between it and the previous field), so no "None" and no ". ." appear. The label part of that literal
("Brand: " in ". Brand: ") and any text before the first field are kept only when their field is present.
Text after the last field is kept when any field is present. Lists are joined with ``list_separator``.

Limitation: a closing bracket belongs to the text in front of the next field, so ``"{title} ({year})"``
renders as ``"Heat)"`` when ``year`` is missing. Put brackets around a field only at the end of a template.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

ATTRIBUTES_FIELD = "attributes"  # user-template field: every user attribute column as "name: value"
HISTORY_FIELD = "history"  # user-template field: titles of the user's latest training items
_USER_KEY_COLUMNS = ("user_idx", "user_id")

# Leading punctuation and spaces of a literal: the separator dropped with the field after it.
_SEPARATOR = re.compile(r"^[\s.,;:|/·•\-–—]*")
_SENTENCE_END = (".", "!", "?")


@dataclass
class TextTemplateConfig:
    """Templates for item and user texts."""

    item_template: str = "{title}. {categories}. {brand}. {description}"  # fields: any item column
    user_template: str = "{attributes}. Recent items: {history}"  # fields: any user column, attributes, history
    history_items: int = 10  # latest training items whose titles go into {history}, most recent last
    list_separator: str = ", "  # joins list values such as categories
    history_separator: str = "; "  # joins the titles in {history}; titles often contain commas

    def __post_init__(self) -> None:
        parse_template(self.item_template, "templates.item_template")
        parse_template(self.user_template, "templates.user_template")
        if self.history_items < 0:
            raise ValueError(f"templates.history_items={self.history_items} is negative; use 0 to leave out the history.")


@dataclass(frozen=True)
class _Piece:
    separator: str  # dropped when the field is missing or is the first present field
    label: str  # kept in front of the value when the field is present
    field: str


def parse_template(template: str, where: str = "template") -> tuple[list[_Piece], str]:
    """Split a template into one piece per field and the text after the last field.

    Raises ValueError for positional fields (``{}``), format specs, conversions and templates without fields.
    """
    pieces: list[_Piece] = []
    pending = ""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{where}={template!r} is not a valid format string: {error}.") from error

    for literal, field, spec, conversion in parsed:
        text = pending + literal
        if field is None:
            pending = text
            continue
        if field == "" or field.isdigit():
            raise ValueError(f"{where}={template!r} has a positional field; name every field, e.g. {{title}}.")
        if spec or conversion:
            raise ValueError(f"{where}={template!r} uses a format spec or conversion on {{{field}}}; write plain {{{field}}}.")
        # Text before the first field is its label, e.g. "Movie: " in "Movie: {title}".
        separator = _SEPARATOR.match(text).group(0) if pieces else ""
        pieces.append(_Piece(separator=separator, label=text[len(separator) :], field=field))
        pending = ""

    if not pieces:
        raise ValueError(f"{where}={template!r} has no {{field}}; name at least one field, e.g. {{title}}.")
    return pieces, pending


def template_fields(template: str) -> list[str]:
    """Field names used by a template, in order."""
    return [piece.field for piece in parse_template(template)[0]]


def format_value(value: Any, list_separator: str = ", ") -> str:
    """Render one field value as text; an empty string means the field is missing."""
    if value is None:
        return ""
    if isinstance(value, pl.Series):
        value = value.to_list()
    if isinstance(value, (list, tuple)):
        parts = (format_value(element, list_separator) for element in value)
        return list_separator.join(part for part in parts if part)
    return str(value).strip()


def render_template(template: str, values: Mapping[str, Any], list_separator: str = ", ") -> str:
    """Fill a template from ``values``, dropping missing fields and their separators.

    Returns an empty string when every field is missing. Raises ValueError when the template names a field
    that ``values`` does not contain.
    """
    pieces, suffix = parse_template(template)
    unknown = [piece.field for piece in pieces if piece.field not in values]
    if unknown:
        raise ValueError(f"template {template!r} uses fields {unknown} that are not available; available fields: {sorted(values)}.")

    rendered = ""
    for piece in pieces:
        text = format_value(values[piece.field], list_separator)
        if not text:
            continue
        if not rendered:
            rendered = piece.label + text
            continue
        separator = piece.separator
        # A value that already ends a sentence gets no second full stop: "Good." + ". " -> "Good. ".
        if separator.startswith(".") and rendered.endswith(_SENTENCE_END):
            separator = separator[1:]
        rendered += separator + piece.label + text

    if not rendered:
        return ""
    if suffix.startswith(".") and rendered.endswith(_SENTENCE_END):
        suffix = suffix[1:]
    return rendered + suffix


def _rows_by_index(frame: pl.DataFrame, index_column: str, table: str) -> list[dict[str, Any]]:
    """Rows of ``frame`` sorted by ``index_column``, which must run 0..height-1."""
    if index_column not in frame.columns:
        raise ValueError(f"{table} table has no column '{index_column}'; pass the {table} of a ProcessedDataset.")
    frame = frame.sort(index_column)
    expected = pl.int_range(frame.height, eager=True)
    if not frame[index_column].cast(pl.Int64).equals(expected.cast(pl.Int64), check_names=False):
        raise ValueError(f"{table}.{index_column} must run 0..{frame.height - 1} without gaps or repeats.")
    return frame.to_dicts()


def render_item_texts(items: pl.DataFrame, cfg: TextTemplateConfig) -> list[str]:
    """Render ``cfg.item_template`` for every item; entry ``i`` is the text of item_idx ``i``."""
    rows = _rows_by_index(items, "item_idx", "items")
    texts = [render_template(cfg.item_template, row, cfg.list_separator) for row in rows]
    empty = sum(1 for text in texts if not text)
    if empty:
        raise ValueError(
            f"{empty} of {len(texts)} items render to an empty text with item_template={cfg.item_template!r}; "
            "include {title}, which preprocessing always fills."
        )
    return texts


def render_user_texts(
    users: pl.DataFrame,
    train_sequences: Sequence[Sequence[int]],
    item_titles: Sequence[str],
    cfg: TextTemplateConfig,
) -> list[str]:
    """Render ``cfg.user_template`` for every user; entry ``u`` is the text of user_idx ``u``.

    ``train_sequences[u]`` contains user ``u``'s training item_idx values in time order. Pass training events
    only, because validation and test targets must not reach any input of training. ``{history}`` contains
    the titles of the last ``cfg.history_items`` of them, most recent last. ``{attributes}`` contains every
    non-null user column other than user_idx and user_id as "name: value". A user with neither renders as
    an empty string.
    """
    rows = _rows_by_index(users, "user_idx", "users")
    if len(train_sequences) != len(rows):
        raise ValueError(
            f"train_sequences has {len(train_sequences)} entries but users has {len(rows)} rows; "
            "pass one sequence per user_idx, empty for users without training events."
        )

    reserved = [column for column in (ATTRIBUTES_FIELD, HISTORY_FIELD) if column in users.columns]
    if reserved:
        raise ValueError(f"users has columns {reserved}, which the user template reserves; rename them.")
    attribute_columns = [column for column in users.columns if column not in _USER_KEY_COLUMNS]
    texts = []
    for row, sequence in zip(rows, train_sequences, strict=True):
        recent = list(sequence)[-cfg.history_items :] if cfg.history_items else []
        values = dict(row)
        values[HISTORY_FIELD] = cfg.history_separator.join(item_titles[int(item)] for item in recent)
        attributes = ((column, format_value(row[column], cfg.list_separator)) for column in attribute_columns)
        values[ATTRIBUTES_FIELD] = ", ".join(f"{column}: {value}" for column, value in attributes if value)
        texts.append(render_template(cfg.user_template, values, cfg.list_separator))
    return texts
