"""Readers on the real datasets (counts from each dataset's README) and on small files in every format."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import polars as pl
import pytest
from omegaconf import OmegaConf

from ttds.data.config import DatasetConfig, dataset_config_from_dict
from ttds.data.readers import read_dataset, resolve_files
from ttds.data.schema import RawDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TTDS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# config name -> (users, distinct items in the interactions, interactions, rows of the items table)
RAW_COUNTS = {
    "movietweetings_100k": (16_554, 10_506, 100_000, 10_506),
    "movielens_100k": (943, 1_682, 100_000, 1_682),
    "amazon18_scientific": (8_442, 4_385, 59_427, 4_385),
    "amazon14_beauty": (22_363, 12_101, 198_502, 12_101),
    "amazon14_sports": (35_598, 18_357, 296_337, 18_357),
    "amazon14_toys": (19_412, 11_924, 167_597, 11_924),
    "yelp_p5": (30_431, 20_033, 316_354, 20_033),
    "online_retail": (4_074, 3_143, 264_444, 3_656),
}


def load_config(name: str) -> DatasetConfig:
    """Load conf/dataset/<name>.yaml with the path variables that conf/train.yaml defines."""
    node = OmegaConf.merge(
        {"paths": {"shared_data": str(SHARED_DATA), "repo_data": str(REPO_ROOT / "data")}},
        {"dataset": OmegaConf.load(REPO_ROOT / "conf" / "dataset" / f"{name}.yaml")},
    )
    return dataset_config_from_dict(OmegaConf.to_container(node.dataset, resolve=True))


@pytest.fixture(scope="module", params=sorted(RAW_COUNTS))
def real_dataset(request: pytest.FixtureRequest) -> tuple[str, RawDataset]:
    cfg = load_config(request.param)
    if not Path(cfg.path).is_dir():
        pytest.skip(f"{cfg.path} is not available; set TTDS_SHARED_DATA to the datasets folder")
    return request.param, read_dataset(cfg)


@pytest.fixture(scope="module")
def movietweetings() -> RawDataset:
    return read_dataset(load_config("movietweetings_100k"))


def require_shared(folder: str) -> None:
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"{SHARED_DATA / folder} is not available; set TTDS_SHARED_DATA to the datasets folder")


def test_real_dataset_counts_match_readme(real_dataset):
    name, dataset = real_dataset
    users, items, interactions, item_rows = RAW_COUNTS[name]
    assert dataset.interactions["user_id"].n_unique() == users
    assert dataset.interactions["item_id"].n_unique() == items
    assert dataset.interactions.height == interactions
    assert dataset.items.height == item_rows


def test_file_row_follows_source_order(real_dataset):
    _, dataset = real_dataset
    file_row = dataset.interactions["file_row"]
    assert file_row[0] == 0
    assert (file_row.diff().drop_nulls() == 1).all()


def test_research_only_flags_match_licences():
    flags = {name: load_config(name).research_only for name in RAW_COUNTS}
    assert flags.pop("movietweetings_100k") is False
    assert flags.pop("online_retail") is False
    assert all(flags.values()), flags


def test_movietweetings_keeps_leading_zeros(movietweetings):
    items = movietweetings.items
    dark_knight = items.filter(pl.col("item_id") == "0468569").row(0, named=True)
    assert dark_knight["title"] == "The Dark Knight (2008)"
    assert dark_knight["categories"] == ["Action", "Crime", "Drama", "Thriller"]
    assert movietweetings.interactions.filter(pl.col("item_id") == "0104257").height > 0


def test_movietweetings_empty_genres_are_null(movietweetings):
    assert movietweetings.items["categories"].null_count() == 66


def test_movietweetings_first_rating_row(movietweetings):
    first = movietweetings.interactions.row(0, named=True)
    assert first == {"user_id": "1", "item_id": "1074638", "timestamp": 1365029107, "file_row": 0, "rating": 7.0}


def test_movielens_title_gets_year_and_genres():
    require_shared("movielens-100k")
    dataset = read_dataset(load_config("movielens_100k"))
    toy_story = dataset.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]
    assert dataset.users.columns == ["user_id", "age", "gender", "occupation", "zip_code"]
    assert dataset.users.height == 943
    assert dataset.users.filter(pl.col("user_id") == "1")["occupation"][0] == "technician"


def test_unisrec_chaining_matches_seq_file():
    require_shared("amazon18-scientific")
    cfg = load_config("amazon18_scientific")
    from_seq = read_dataset(cfg)
    files_without_seq = {role: name for role, name in cfg.files.items() if role != "seq"}
    chained = read_dataset(DatasetConfig(name=cfg.name, format=cfg.format, path=cfg.path, files=files_without_seq))
    assert chained.interactions.equals(from_seq.interactions)
    assert chained.interactions["timestamp"].max() == 79  # the maximum user length is 80 events, above the 50-item history limit


def test_unisrec_uses_original_ids():
    require_shared("amazon18-scientific")
    dataset = read_dataset(load_config("amazon18_scientific"))
    first = dataset.interactions.row(0, named=True)
    assert first["user_id"] == "ABW8NXS7SV55K"
    assert first["item_id"] == "B00TNNWMXI"
    assert first["timestamp"] == 0
    title = dataset.items.filter(pl.col("item_id") == "B0000223SI")["title"][0]
    assert title.startswith("PORTER-CABLE 740000801")


def test_p5_attributes_become_categories():
    require_shared("amazon14-p5")
    dataset = read_dataset(load_config("amazon14_beauty"))
    opi = dataset.items.filter(pl.col("item_id") == "B004756YJA").row(0, named=True)
    assert opi["categories"] == ["OPI", "Makeup", "Nails", "Nail Polish"]
    assert opi["title"] is None


def test_p5_timestamps_are_positions():
    require_shared("amazon14-p5")
    dataset = read_dataset(load_config("amazon14_toys"))
    first_user = dataset.interactions.filter(pl.col("user_id") == "AQW172A5SG5OC")
    assert first_user["timestamp"].to_list() == list(range(first_user.height))
    assert first_user["item_id"][0] == "B001RNFQNK"
    assert dataset.items["title"].null_count() == dataset.items.height


def test_resolve_files_lists_existing_inputs():
    files = resolve_files(load_config("movietweetings_100k"))
    assert [path.name for path in files] == ["ratings.dat", "movies.dat"]
    assert all(path.is_file() for path in files)


AMAZON_ROWS = [
    ("B000A", "U1", 5.0, 1500000000),
    ("B000B", "U1", 4.0, 1500000100),
    ("B000A", "U2", 3.0, 1400000000),
]


def write_amazon_files(folder: Path) -> None:
    ratings = "".join(f"{item},{user},{rating},{time}\n" for item, user, rating, time in AMAZON_ROWS)
    (folder / "Tiny.csv").write_text(ratings)
    reviews = [{"overall": rating, "reviewerID": user, "asin": item, "unixReviewTime": time, "reviewText": "ok"} for item, user, rating, time in AMAZON_ROWS]
    (folder / "Tiny.json.gz").write_bytes(gzip.compress("".join(json.dumps(review) + "\n" for review in reviews).encode()))
    meta = [
        {"asin": "B000A", "title": "Beaker &amp; Flask", "brand": "Lab Co", "category": ["Industrial & Scientific", "Lab"], "description": ["Glass.", "500 ml."]},
        {"asin": "B000C", "title": "Unused", "category": [], "description": []},
    ]
    (folder / "meta_Tiny.json").write_text("".join(json.dumps(record) + "\n" for record in meta))


def test_amazon2018_ratings_and_reviews_agree(tmp_path):
    write_amazon_files(tmp_path)
    from_csv = read_dataset(DatasetConfig(name="tiny", format="amazon2018", path=str(tmp_path), files={"ratings": "Tiny.csv", "meta": "meta_Tiny.json"}))
    from_json = read_dataset(DatasetConfig(name="tiny", format="amazon2018", path=str(tmp_path), files={"reviews": "Tiny.json.gz", "meta": "meta_Tiny.json"}))
    assert from_csv.interactions.equals(from_json.interactions)
    assert from_csv.interactions["user_id"].to_list() == ["U1", "U1", "U2"]
    assert from_csv.interactions["rating"].to_list() == [5.0, 4.0, 3.0]
    assert from_csv.interactions["timestamp"].to_list() == [1500000000, 1500000100, 1400000000]


def test_amazon2018_meta_maps_fields(tmp_path):
    write_amazon_files(tmp_path)
    dataset = read_dataset(DatasetConfig(name="tiny", format="amazon2018", path=str(tmp_path), files={"ratings": "Tiny.csv", "meta": "meta_Tiny.json"}))
    beaker = dataset.items.filter(pl.col("item_id") == "B000A").row(0, named=True)
    assert beaker["title"] == "Beaker &amp; Flask"  # unescaping is preprocessing's job
    assert beaker["brand"] == "Lab Co"
    assert beaker["categories"] == ["Industrial & Scientific", "Lab"]
    assert beaker["description"] == "Glass. 500 ml."
    assert "B000B" not in dataset.items["item_id"].to_list()
    assert dataset.items.height == 2


def test_table_reads_quoted_csv_and_parquet(tmp_path):
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp,rating\nu1,i1,10,4\nu1,i2,20,\nu2,i1,5,2.5\n")
    (tmp_path / "items.csv").write_text('item_id,title,categories,price\ni1,"Mug, blue",Kitchen|Cups,3.50\ni2,Plate,,\n')
    pl.DataFrame({"user_id": ["u1", "u2"], "age": [31, 45]}).write_parquet(tmp_path / "users.parquet")
    cfg = DatasetConfig(name="tiny", format="table", path=str(tmp_path), files={"interactions": "events.csv", "items": "items.csv", "users": "users.parquet"})
    dataset = read_dataset(cfg)
    assert dataset.interactions["rating"].to_list() == [4.0, None, 2.5]
    mug = dataset.items.filter(pl.col("item_id") == "i1").row(0, named=True)
    assert mug["title"] == "Mug, blue"
    assert mug["categories"] == ["Kitchen", "Cups"]
    assert mug["price"] == "3.50"
    assert dataset.items.filter(pl.col("item_id") == "i2")["categories"][0] is None
    assert dataset.users["age"].to_list() == ["31", "45"]


def test_table_renames_columns_and_reads_gzip(tmp_path):
    rows = "customer\tproduct\twhen\nc1\tp1\t100\nc1\tp2\t100\n"
    (tmp_path / "events.tsv.gz").write_bytes(gzip.compress(rows.encode()))
    options = {"user_column": "customer", "item_column": "product", "time_column": "when"}
    dataset = read_dataset(DatasetConfig(name="tiny", format="table", path=str(tmp_path), files={"interactions": "events.tsv.gz"}, options=options))
    assert dataset.interactions["item_id"].to_list() == ["p1", "p2"]
    assert dataset.interactions["rating"].null_count() == 2
    assert dataset.items["item_id"].to_list() == ["p1", "p2"]


def write_unisrec_folder(folder: Path, sequences: dict[str, list[int]], window: int) -> dict[str, str]:
    """Write a UniSRec folder whose .inter rows hold histories truncated to ``window`` items."""
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    splits = {"train": [], "valid": [], "test": []}
    for user, sequence in sequences.items():
        n = len(sequence)
        for k in range(1, n):
            history = " ".join(str(item) for item in sequence[max(0, k - window) : k])
            split = "test" if k == n - 1 else "valid" if k == n - 2 else "train"
            splits[split].append(f"{user}\t{history}\t{sequence[k]}\n")
    for split, rows in splits.items():
        (folder / f"T.{split}.inter").write_text(header + "".join(rows))

    n_items = 1 + max(item for sequence in sequences.values() for item in sequence)
    (folder / "T.item2index").write_text("".join(f"ASIN{item}\t{item}\n" for item in range(n_items)))
    (folder / "T.user2index").write_text("".join(f"REVIEWER{user}\t{user}\n" for user in sequences))
    (folder / "T.text").write_text("item_id:token\ttext:token_seq\n" + "".join(f"ASIN{item}\tItem {item}. Lab. Acme. \n" for item in range(n_items)))
    return {role: f"T.{role}" for role in ("text", "item2index", "user2index")} | {split: f"T.{split}.inter" for split in splits}


def test_unisrec_chaining_recovers_truncated_history(tmp_path):
    sequences = {"0": [5, 4, 3, 2, 1, 0, 6], "1": [2, 1, 0, 3]}
    files = write_unisrec_folder(tmp_path, sequences, window=3)
    dataset = read_dataset(DatasetConfig(name="tiny", format="unisrec", path=str(tmp_path), files=files))
    first = dataset.interactions.filter(pl.col("user_id") == "REVIEWER0")
    second = dataset.interactions.filter(pl.col("user_id") == "REVIEWER1")
    assert first["item_id"].to_list() == [f"ASIN{item}" for item in sequences["0"]]
    assert second["item_id"].to_list() == [f"ASIN{item}" for item in sequences["1"]]
    assert first["timestamp"].to_list() == list(range(7))
    assert dataset.items.filter(pl.col("item_id") == "ASIN6")["title"][0] == "Item 6. Lab. Acme. "


def test_p5_reads_items_with_field_options(tmp_path):
    (tmp_path / "seq.txt").write_text("u1 b2 b1 b2\nu2 b1\n")
    items = [{"id": "b1", "name": "Cafe", "tags": ["Coffee"], "about": ["Open", "late"]}, {"id": "b2", "name": "Deli", "tags": "Food"}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    options = {"item_id_field": "id", "title_field": "name", "categories_field": "tags", "description_field": "about"}
    cfg = DatasetConfig(name="tiny", format="p5", path=str(tmp_path), files={"sequences": "seq.txt", "items": "items.jsonl"}, options=options)
    dataset = read_dataset(cfg)
    assert dataset.interactions["item_id"].to_list() == ["b2", "b1", "b2", "b1"]
    assert dataset.interactions["timestamp"].to_list() == [0, 1, 2, 0]
    assert dataset.interactions["file_row"].to_list() == [0, 1, 2, 3]
    cafe = dataset.items.filter(pl.col("item_id") == "b1").row(0, named=True)
    assert cafe["title"] == "Cafe"
    assert cafe["categories"] == ["Coffee"]
    assert cafe["description"] == "Open late"
    assert dataset.items.filter(pl.col("item_id") == "b2").row(0, named=True)["categories"] == ["Food"]
