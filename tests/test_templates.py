import polars as pl
import pytest

from ttds.data.dataset import ProcessedDataset
from ttds.data.views import training_sequences
from ttds.embeddings.templates import (
    TextTemplateConfig,
    render_item_texts,
    render_template,
    render_user_texts,
    template_fields,
)
from ttds.models.sasrec_module import sequences_by_user

ITEM_TEMPLATE = "{title}. {categories}. {brand}. {description}"


def item_values(**overrides):
    values = {"title": "Heat", "categories": ["Action", "Crime"], "brand": "Warner", "description": "A heist in LA."}
    return values | overrides


def test_item_template_renders_all_fields():
    assert render_template(ITEM_TEMPLATE, item_values()) == "Heat. Action, Crime. Warner. A heist in LA."


@pytest.mark.parametrize("missing", [None, "", "   ", [], [None, ""]])
def test_missing_field_drops_its_separator(missing):
    text = render_template(ITEM_TEMPLATE, item_values(brand=missing))
    assert text == "Heat. Action, Crime. A heist in LA."


def test_missing_fields_leave_no_none_or_empty_sentences():
    text = render_template(ITEM_TEMPLATE, item_values(categories=None, brand=None, description=None))
    assert text == "Heat"
    assert "None" not in render_template(ITEM_TEMPLATE, item_values(brand=None))


def test_missing_first_field_leaves_no_leading_separator():
    text = render_template(ITEM_TEMPLATE, item_values(title=None))
    assert text == "Action, Crime. Warner. A heist in LA."


def test_sentence_end_not_doubled():
    text = render_template(ITEM_TEMPLATE, item_values(title="Heat!", brand="Warner Inc."))
    assert text == "Heat! Action, Crime. Warner Inc. A heist in LA."
    assert ". ." not in text
    assert ".." not in text


def test_labels_are_dropped_with_their_field():
    template = "Title: {title}. Brand: {brand}."
    assert render_template(template, {"title": "Heat", "brand": None}) == "Title: Heat."
    assert render_template(template, {"title": None, "brand": "Warner"}) == "Brand: Warner."
    assert render_template(template, {"title": "Heat", "brand": "Warner"}) == "Title: Heat. Brand: Warner."


def test_all_fields_missing_renders_empty_text():
    assert render_template("Title: {title}.", {"title": None}) == ""


def test_lists_use_the_list_separator():
    assert render_template("{categories}", {"categories": ["A", "B"]}, list_separator=" | ") == "A | B"


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match=r"uses fields \['year'\] that are not available"):
        render_template("{title} {year}", {"title": "Heat"})


def test_config_rejects_positional_and_formatted_fields():
    with pytest.raises(ValueError, match="templates.item_template=.*positional field"):
        TextTemplateConfig(item_template="{} and {title}")
    with pytest.raises(ValueError, match="format spec or conversion on {title}"):
        TextTemplateConfig(item_template="{title!r}")
    with pytest.raises(ValueError, match="has no {field}"):
        TextTemplateConfig(user_template="no fields here")


def test_template_fields_lists_fields_in_order():
    assert template_fields(ITEM_TEMPLATE) == ["title", "categories", "brand", "description"]


def make_items():
    return pl.DataFrame(
        {
            "item_idx": pl.Series([2, 0, 1, 3], dtype=pl.Int32),
            "item_id": ["c", "a", "b", "d"],
            "title": ["Gamma", "Alpha", "Beta", "Delta"],
            "brand": [None, "Acme", None, None],
            "description": [None, None, "Second.", None],
            "categories": [["Toys"], [], None, ["Games", "Toys"]],
        }
    )


def test_item_texts_follow_item_idx_order():
    texts = render_item_texts(make_items(), TextTemplateConfig())
    assert texts == ["Alpha. Acme", "Beta. Second.", "Gamma. Toys", "Delta. Games, Toys"]


def test_item_texts_reject_gaps_in_item_idx():
    items = make_items().with_columns(pl.Series("item_idx", [5, 0, 1, 3], dtype=pl.Int32))
    with pytest.raises(ValueError, match=r"items.item_idx must run 0..3 without gaps"):
        render_item_texts(items, TextTemplateConfig())


def make_dataset(users: pl.DataFrame) -> ProcessedDataset:
    """Two users; valid and test events use items that appear in no training event."""
    sequences = {0: [0, 1, 2, 3, 4, 5], 1: [2, 0, 6, 7]}
    rows = []
    for user, items in sequences.items():
        for position, item in enumerate(items):
            split = "train"
            if position == len(items) - 2:
                split = "valid"
            if position == len(items) - 1:
                split = "test"
            rows.append({"user_idx": user, "item_idx": item, "timestamp": 100 + position, "position": position, "split": split})
    events = pl.DataFrame(rows).with_columns(pl.col("user_idx", "item_idx", "position").cast(pl.Int32))
    items = pl.DataFrame(
        {
            "item_idx": pl.Series(range(8), dtype=pl.Int32),
            "item_id": [f"i{k}" for k in range(8)],
            "title": ["Alien", "Brazil", "Casablanca", "Dune", "ValidOnly", "TestOnly", "ValidTwo", "TestTwo"],
        }
    )
    return ProcessedDataset(name="tiny", events=events, items=items, users=users)


def user_texts(ds: ProcessedDataset, cfg: TextTemplateConfig) -> list[str]:
    sequences = sequences_by_user(training_sequences(ds), ds.n_users)
    return render_user_texts(ds.users, sequences, ds.items["title"].to_list(), cfg)


def test_user_history_is_latest_training_titles():
    users = pl.DataFrame({"user_idx": pl.Series([0, 1], dtype=pl.Int32), "user_id": ["u0", "u1"]})
    texts = user_texts(make_dataset(users), TextTemplateConfig(history_items=3))
    assert texts[0] == "Recent items: Brazil; Casablanca; Dune"
    assert texts[1] == "Recent items: Casablanca; Alien"


def test_user_texts_never_contain_valid_or_test_items():
    users = pl.DataFrame({"user_idx": pl.Series([0, 1], dtype=pl.Int32), "user_id": ["u0", "u1"]})
    texts = user_texts(make_dataset(users), TextTemplateConfig(history_items=50))
    for text in texts:
        for title in ("ValidOnly", "TestOnly", "ValidTwo", "TestTwo"):
            assert title not in text


def test_user_texts_render_attributes():
    users = pl.DataFrame(
        {"user_idx": pl.Series([1, 0], dtype=pl.Int32), "user_id": ["u1", "u0"], "age": ["30", None], "city": ["Oslo", "Rome"]}
    )
    ds = make_dataset(users)
    texts = user_texts(ds, TextTemplateConfig(history_items=1))
    assert texts[0] == "city: Rome. Recent items: Dune"
    assert texts[1] == "age: 30, city: Oslo. Recent items: Alien"

    by_column = user_texts(ds, TextTemplateConfig(user_template="From {city}, aged {age}; liked {history}", history_items=1))
    assert by_column[0] == "From Rome; liked Dune"
    assert by_column[1] == "From Oslo, aged 30; liked Alien"


def test_user_texts_require_one_sequence_per_user():
    users = pl.DataFrame({"user_idx": pl.Series([0, 1], dtype=pl.Int32), "user_id": ["u0", "u1"]})
    with pytest.raises(ValueError, match="train_sequences has 1 entries but users has 2 rows"):
        render_user_texts(users, [[0]], ["Alien"], TextTemplateConfig())


def test_user_columns_may_not_shadow_reserved_fields():
    users = pl.DataFrame({"user_idx": pl.Series([0], dtype=pl.Int32), "user_id": ["u0"], "history": ["x"]})
    with pytest.raises(ValueError, match=r"users has columns \['history'\], which the user template reserves"):
        render_user_texts(users, [[0]], ["Alien"], TextTemplateConfig())
