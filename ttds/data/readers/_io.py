"""File access shared by the readers: gzip detection, delimited text and JSON lines, with errors that name the line.

Every parse problem becomes one DataFormatError naming the file, the 1-based line (the header counts as line 1)
or the column, and the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any

import polars as pl

from ttds.data.config import DatasetConfig, closest_hint
from ttds.data.schema import DataFormatError

GZIP_MAGIC = b"\x1f\x8b"
LINE_COLUMN = "_line"  # 1-based source line of each record, kept until the reader has checked its values
OTHER_DELIMITERS = ("\t", ",", ";", "|", "::")


def dataset_file(cfg: DatasetConfig, role: str, default: str | None = None, required: bool = True) -> Path | None:
    """Resolve the file that ``files.<role>`` names inside ``cfg.path``, and raise FileNotFoundError if it does not exist."""
    name = cfg.files.get(role, default)
    if name is None:
        if required:
            raise ValueError(f"dataset.files.{role} is not set for format '{cfg.format}'; add the file name under dataset.files.{role}.")
        return None

    path = Path(cfg.path) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: file not found (config key dataset.files.{role}={name!r}, dataset.path={cfg.path!r}). "
            "Fix: correct dataset.path or the file name, or set TTDS_SHARED_DATA to the folder holding the datasets."
        )
    return path


def read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it when it starts with the gzip magic bytes, whatever its name."""
    data = path.read_bytes()
    if not data.startswith(GZIP_MAGIC):
        return data

    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataFormatError(
            path, f"the gzip stream is truncated or corrupt ({error})", "download or compress the file again; `gzip -t FILE` checks it"
        ) from error


def read_text(path: Path) -> str:
    """Read a maybe-gzipped UTF-8 file, and reject an empty one."""
    data = read_bytes(path)
    if not data.strip():
        raise DataFormatError(path, "the file is empty", "point the config at the file with the data, or regenerate it")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataFormatError(path, f"invalid UTF-8 byte at offset {error.start}", "convert the file to UTF-8 (e.g. `iconv -t UTF-8`)", line=line) from error

    return text.removeprefix("\ufeff")


def read_delimited(path: Path, delimiter: str, header: list[str] | None = None, quoting: bool = True) -> pl.DataFrame:
    """Read a delimited text file into string columns plus ``_line``, and check that every record has every field.

    With ``header=None`` the first line names the columns. Otherwise the file has no header line and ``header``
    names its columns. Blank lines are skipped. A multi-character delimiter (``::``) implies no quoting.
    """
    # NOTE: records are split in Python so errors can name the exact line (about 3.5 s per million rows, measured on
    # online_retail on a 2-core CPU machine).
    # That suits the sets in conf/dataset; a full Amazon 2018 ratings file (tens of millions of rows) takes minutes.
    text = read_text(path)
    if len(delimiter) > 1:
        records = _split_lines(text, delimiter)
    else:
        records = _csv_records(path, text, delimiter, quoting)

    first_line = 1
    expected = f"expected {len(header)}: {', '.join(header)}" if header else ""
    if header is None:
        first_line, header = records[0]
        header = [name.strip() for name in header]
        records = records[1:]
        _check_header(path, header, delimiter)
        expected = f"the header on line {first_line} has {len(header)}"
    elif records and len(records[0][1]) == 1 and len(header) > 1:
        _raise_wrong_delimiter(path, records[0][0], records[0][1][0], delimiter, len(header))

    n_fields = len(header)
    for index, (line, fields) in enumerate(records):
        if len(fields) == n_fields:
            continue
        is_last = index == len(records) - 1
        if len(fields) < n_fields and is_last and not text.endswith("\n"):
            problem = f"the last record is cut short ({len(fields)} of {n_fields} fields and no final newline)"
            fix = "the file is truncated: copy or download it again"
        elif len(fields) == 1 and n_fields > 1:
            _raise_wrong_delimiter(path, line, fields[0], delimiter, n_fields)
        else:
            problem = f"the record has {len(fields)} fields but {expected}"
            fix = "repair the line (a field may contain the delimiter unquoted) or remove it"
        raise DataFormatError(path, problem, fix, line=line)

    if not records:
        raise DataFormatError(path, "the file has a header but no data rows", "point the config at the file with the data", line=first_line)

    columns = {name: [fields[i] for _, fields in records] for i, name in enumerate(header)}
    columns[LINE_COLUMN] = [line for line, _ in records]
    return pl.DataFrame(columns, schema={**{name: pl.Utf8 for name in header}, LINE_COLUMN: pl.Int64})


def _csv_records(path: Path, text: str, delimiter: str, quoting: bool) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE, strict=True)
    records = []
    start_line = 1
    try:
        for fields in reader:
            if fields:
                records.append((start_line, fields))
            start_line = reader.line_num + 1
    except csv.Error as error:
        problem = f"invalid quoting in the record starting here ({error})"
        raise DataFormatError(path, problem, "close the open quote or quote the whole field", line=start_line) from error
    return records


def _split_lines(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    lines = text.split("\n")
    return [(number, line.rstrip("\r").split(delimiter)) for number, line in enumerate(lines, start=1) if line.strip()]


def _check_header(path: Path, header: list[str], delimiter: str) -> None:
    if len(header) == 1:
        for other in OTHER_DELIMITERS:
            if other != delimiter and other in header[0]:
                _raise_wrong_delimiter(path, 1, header[0], delimiter, None)
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataFormatError(path, f"the header repeats the column(s) {duplicated}", "give every column a distinct name", line=1)


def _raise_wrong_delimiter(path: Path, line: int, field: str, delimiter: str, n_fields: int | None) -> None:
    found = next((other for other in OTHER_DELIMITERS if other != delimiter and other in field), None)
    expected = f" instead of {n_fields}" if n_fields else ""
    guess = f"; it looks delimited by {found!r}" if found else ""
    raise DataFormatError(
        path,
        f"the line splits on {delimiter!r} into one field{expected}{guess}",
        f"convert the file to {delimiter!r}-delimited fields, or (format 'table') set dataset.options.delimiter to its delimiter",
        line=line,
    )


def require_columns(path: Path, frame: pl.DataFrame, required: list[str], option_hint: str) -> None:
    """Raise naming the first required column the file lacks, and the columns it has."""
    present = [name for name in frame.columns if name != LINE_COLUMN]
    for name in required:
        if name not in frame.columns:
            raise DataFormatError(path, f"required column '{name}' is missing (columns found: {present})", option_hint, column=name)


def parse_numbers(path: Path, frame: pl.DataFrame, column: str, dtype: pl.DataType, allow_null: bool = False) -> pl.DataFrame:
    """Cast string column ``column`` to ``dtype``, and raise on the first value that is empty or not a number.

    Int64 accepts integral floats such as ``881250949.0`` (RecBole writes timestamps as floats).
    """
    values = pl.col(column).str.strip_chars()
    if dtype == pl.Int64:
        as_float = values.cast(pl.Float64, strict=False)
        parsed = pl.coalesce(values.cast(pl.Int64, strict=False), pl.when(as_float == as_float.floor()).then(as_float.cast(pl.Int64, strict=False)))
    else:
        parsed = values.cast(dtype, strict=False)

    checked = frame.with_columns(parsed.alias("_parsed"))
    blank = pl.col(column).is_null() | (pl.col(column).str.strip_chars() == "")
    bad = checked.filter(pl.col("_parsed").is_null() & (~blank if allow_null else pl.lit(True)))
    if bad.height:
        value = bad[column][0]
        kind = "an integer" if dtype == pl.Int64 else "a number"
        problem = f"{column} is empty" if value is None or not value.strip() else f"{column}={value!r} is not {kind}"
        raise DataFormatError(path, problem, f"write {kind} in column '{column}' or remove the row", line=int(bad[LINE_COLUMN][0]), column=column)

    return checked.with_columns(pl.col("_parsed").alias(column)).drop("_parsed")


def read_json_lines(path: Path, fields: list[str]) -> dict[str, list[Any]]:
    """Read JSON lines into one list of values per requested field plus ``_line``. Absent fields are None."""
    text = read_text(path)
    lines = text.split("\n")
    columns: dict[str, list[Any]] = {name: [] for name in [*fields, LINE_COLUMN]}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            is_last = number == len(lines) and not text.endswith("\n")
            problem = "the last line is cut short" if is_last else f"invalid JSON ({error.msg} at character {error.pos})"
            fix = "the file is truncated: copy or download it again" if is_last else "write one JSON object per line"
            raise DataFormatError(path, problem, fix, line=number) from error
        if not isinstance(record, dict):
            raise DataFormatError(path, f"the line contains a JSON {type(record).__name__}, not an object", "write one JSON object per line", line=number)
        for name in fields:
            columns[name].append(record.get(name))
        columns[LINE_COLUMN].append(number)
    return columns


def json_strings(path: Path, records: dict[str, list[Any]], field: str, join: str | None = None) -> pl.Series:
    """Convert a JSON field to strings: numbers become text, and lists are joined with ``join`` (or rejected)."""
    values = []
    for value, line in zip(records[field], records[LINE_COLUMN], strict=True):
        if isinstance(value, list) and join is not None:
            value = join.join(str(part) for part in value)
        if isinstance(value, (dict, list)):
            raise DataFormatError(path, f"field '{field}' contains a JSON {type(value).__name__}, expected a string", "write the field as a string", line=line, column=field)
        values.append(None if value is None else str(value))
    return pl.Series(field, values, dtype=pl.Utf8)


def json_string_lists(path: Path, records: dict[str, list[Any]], field: str) -> pl.Series:
    """Convert a JSON field to lists of strings: a list keeps its elements, and a single string becomes one element."""
    values = []
    for value, line in zip(records[field], records[LINE_COLUMN], strict=True):
        if isinstance(value, str):
            value = [value]
        if value is not None and (not isinstance(value, list) or any(isinstance(part, (dict, list)) for part in value)):
            raise DataFormatError(path, f"field '{field}' must be a list of strings", "write the field as a JSON list of strings", line=line, column=field)
        values.append(None if value is None else [str(part) for part in value])
    return pl.Series(field, values, dtype=pl.List(pl.Utf8))


def reject_duplicate_ids(path: Path, frame: pl.DataFrame, key: str, fix: str | None = None) -> None:
    """Raise naming the line of the second occurrence of the first repeated id."""
    repeated = frame.filter(pl.col(key).is_duplicated() & ~pl.col(key).is_first_distinct())
    if repeated.height:
        value = repeated[key][0]
        first = frame.filter(pl.col(key) == value)[LINE_COLUMN][0]
        raise DataFormatError(
            path,
            f"{key} {value!r} appears again (first on line {first})",
            fix or f"keep one row per {key} in the file",
            line=int(repeated[LINE_COLUMN][0]),
            column=key,
        )


def reject_empty_ids(path: Path, frame: pl.DataFrame, keys: list[str]) -> None:
    """Raise naming the first line whose id field is empty."""
    for key in keys:
        empty = frame.filter(pl.col(key).is_null() | (pl.col(key).str.strip_chars() == ""))
        if empty.height:
            raise DataFormatError(path, f"{key} is empty", f"fill in {key} or remove the row", line=int(empty[LINE_COLUMN][0]), column=key)


def canonical_interactions(frame: pl.DataFrame) -> pl.DataFrame:
    """Select the canonical interaction columns in source order, with ``file_row`` numbering the rows from 0.

    ``frame`` needs user_id, item_id and timestamp. A missing rating column becomes null.
    """
    rating = pl.col("rating").cast(pl.Float64) if "rating" in frame.columns else pl.lit(None, dtype=pl.Float64).alias("rating")
    return frame.select(
        pl.col("user_id").cast(pl.Utf8),
        pl.col("item_id").cast(pl.Utf8),
        pl.col("timestamp").cast(pl.Int64),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("file_row"),
        rating,
    )


def sequence_interactions(users: list[str], sequences: list[list[str]]) -> pl.DataFrame:
    """Expand per-user item sequences (oldest first) into interactions whose timestamp is the 0-based position."""
    frame = pl.DataFrame({"user_id": users, "item_id": sequences}, schema={"user_id": pl.Utf8, "item_id": pl.List(pl.Utf8)})
    events = frame.explode("item_id").with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("timestamp"))
    return canonical_interactions(events)


def merged_options(cfg: DatasetConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """Return ``defaults`` updated with ``cfg.options``, rejecting keys the reader of ``cfg.format`` does not take."""
    unknown = sorted(set(cfg.options) - set(defaults))
    if unknown and not defaults:
        raise ValueError(f"dataset.options has unknown keys {unknown} for format '{cfg.format}', which takes no options; remove them.")
    if unknown:
        raise ValueError(f"dataset.options has unknown keys {unknown} for format '{cfg.format}'; valid keys are {sorted(defaults)}.{closest_hint(unknown, defaults)}")
    return {**defaults, **cfg.options}
