"""Typed dataset and preprocessing settings that conf/dataset/*.yaml mirrors."""

from __future__ import annotations

import difflib
import math
import numbers
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

READER_FORMATS = ("movietweetings", "recbole", "amazon2018", "unisrec", "p5", "table")
DUPLICATE_POLICIES = ("first", "last", "keep")


@dataclass
class PreprocessConfig:
    """Steps applied to a RawDataset before the split; the defaults follow the usual leave-one-out protocol."""

    duplicates: str = "first"  # repeated (user, item): keep the "first" or "last" event, or "keep" all of them
    kcore: int = 5  # iterative k-core on users and items; 0 or 1 turns it off
    min_rating: float | None = None  # drop events rated below this before the k-core; None keeps all
    max_history: int = 20  # history items kept before each target (most recent last)
    fallback_title: str = "item {item_id}"  # title for items with no usable title or no metadata row
    clean_text: bool = True  # unescape HTML entities until none is left, Unicode NFC, collapse whitespace

    def __post_init__(self) -> None:
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"preprocess.duplicates={self.duplicates!r} is not one of {DUPLICATE_POLICIES}; pick one of them.")
        if self.kcore < 0:
            raise ValueError(f"preprocess.kcore={self.kcore} is negative; use 0 to turn the k-core off.")
        if self.max_history < 1:
            raise ValueError(f"preprocess.max_history={self.max_history} must be at least 1.")
        if "{item_id}" not in self.fallback_title:
            raise ValueError(f"preprocess.fallback_title={self.fallback_title!r} must contain '{{item_id}}' so fallback titles stay distinct.")


@dataclass
class DatasetConfig:
    """Dataset location and the reader that parses it."""

    name: str
    format: str
    path: str  # folder holding the files; relative paths resolve against the working directory
    files: dict[str, str] = field(default_factory=dict)  # reader-specific role -> file name inside `path`
    options: dict[str, Any] = field(default_factory=dict)  # reader-specific options (delimiter, subset, ...)
    research_only: bool = False  # true for data whose terms forbid redistribution: never copy it into the repo
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.format not in READER_FORMATS:
            raise ValueError(f"dataset.format={self.format!r} is unknown; use one of {READER_FORMATS}.")
        if isinstance(self.preprocess, dict):
            self.preprocess = build_strict(PreprocessConfig, self.preprocess, "dataset.preprocess")


def build_strict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting keys it does not declare and values of the wrong type.

    ``where`` is the key prefix that error messages use, e.g. "llm" or "backbone.lora"; "" for a config whose keys
    are top-level command-line keys (serve.py). Values whose field is annotated with a nested dataclass or ``Any``
    are left to ``cls`` itself.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where or 'the config'} has unknown keys {unknown}; valid keys are {sorted(known)}.{closest_hint(unknown, known)}")

    # get_type_hints resolves the string annotations that `from __future__ import annotations` leaves.
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        if item.name in values:
            key = f"{where}.{item.name}" if where else item.name
            check_value_type(values[item.name], hints[item.name], key, _field_default(item))
    return cls(**values)


def closest_hint(unknown: Sequence[str], known: Collection[str]) -> str:
    """Return " Did you mean ...?" naming the closest known name for each misspelt one, or "" when none is close."""
    pairs = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        if close:
            pairs.append(f"{close[0]!r} for {name!r}" if len(unknown) > 1 else repr(close[0]))
    return f" Did you mean {', '.join(pairs)}?" if pairs else ""


def check_value_type(value: Any, annotation: Any, key: str, example: Any = None) -> None:
    """Raise ValueError when ``value`` does not fit ``annotation``, naming ``key`` and, where given, an ``example`` value.

    Checked are bool, int (bool excluded), float (int accepted, bool excluded), str, None, and list[...] and dict[...]
    with their element types. Other annotations accept any value.
    """
    members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    matches = [_outer_type_matches(value, member) for member in members]
    if None in matches:
        return  # a member such as a nested dataclass or Any is not checked here, so the dataclass checks the value

    matching = [member for member, matched in zip(members, matches, strict=True) if matched]
    if not matching:
        raise ValueError(_type_error(key, value, members, example))
    if isinstance(value, float) and not math.isfinite(value):
        # nan passes every range check (nan <= 0 is False), so it is refused here for every float setting.
        raise ValueError(f"{key}={value} must be a finite number; set it to a value like {example}.")
    _check_elements(value, matching[0], key)


def _is_union(annotation: Any) -> bool:
    # `X | None` has origin types.UnionType, `Optional[X]` and `Union[X, Y]` have typing.Union.
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _outer_type_matches(value: Any, annotation: Any) -> bool | None:
    """Return whether ``value`` has the outer type of ``annotation``, or None when that annotation is not checked."""
    origin = typing.get_origin(annotation) or annotation
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    if origin is dict:
        return isinstance(value, Mapping)
    return None


def _check_elements(value: Any, annotation: Any, key: str) -> None:
    """Check the items of a list and the values of a dict against their annotated element type."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and arguments:
        for index, element in enumerate(value):
            check_value_type(element, arguments[0], f"{key}[{index}]")
    if origin is dict and len(arguments) == 2:
        for name, element in value.items():
            check_value_type(element, arguments[1], f"{key}.{name}")


# Per checked type: the noun of the error message, and the advice that follows it ({example} is filled in).
_TYPE_ADVICE: dict[Any, tuple[str, str]] = {
    bool: ("a boolean", "set it to true or false"),
    int: ("an integer", "set it to a whole number like {example}"),
    float: ("a number", "set it to a number like {example}"),
    str: ("a string", "set it to text, in quotes if it looks like a number or a boolean"),
    list: ("a list", "set it to a list like {example}"),
    dict: ("a mapping", "set it to key: value pairs"),
}
# Examples for the advice when the field has no default of the right type.
_GENERIC_EXAMPLES: dict[Any, Any] = {
    int: 1,
    float: 0.5,
    str: "a",
    list[int]: [1, 2],
    list[float]: [0.5, 1.0],
    list[str]: ["a", "b"],
}


def _type_error(key: str, value: Any, members: tuple[Any, ...], example: Any) -> str:
    """Write the message for a value that fits none of ``members``, e.g. ``llm.batch_size='abc' must be an integer; ...``."""
    nullable = type(None) in members
    types_given = [member for member in members if member is not type(None)]
    kinds = [typing.get_origin(member) or member for member in types_given]

    noun = " or ".join(_TYPE_ADVICE[kind][0] for kind in kinds)
    if example is None or not _outer_type_matches(example, types_given[0]):
        example = _GENERIC_EXAMPLES.get(types_given[0], [])
    advice = _TYPE_ADVICE[kinds[0]][1].format(example=example)
    if nullable:
        noun, advice = f"{noun} or null", f"{advice}, or null"
    return f"{key}={value!r} must be {noun}; {advice}."


def _field_default(item: Field) -> Any:
    """Return the default of a dataclass field (calling its default_factory), or None when it has none."""
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return None


def dataset_config_from_dict(values: dict[str, Any]) -> DatasetConfig:
    """Build a DatasetConfig from a plain mapping (a resolved Hydra node), rejecting unknown keys."""
    values = {key: value for key, value in values.items() if key != "_target_"}
    return build_strict(DatasetConfig, values, "dataset")
