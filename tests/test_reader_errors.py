"""Malformed input files: each raises one DataFormatError that names the file, the line or column, and the fix."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ttds.data.config import DatasetConfig
from ttds.data.readers import read_dataset, resolve_files
from ttds.data.schema import DataFormatError

EVENTS = "user_id,item_id,timestamp\nu1,i1,10\nu1,i2,20\nu2,i1,30\n"


def table_config(folder: Path, **files: str) -> DatasetConfig:
    return DatasetConfig(name="tiny", format="table", path=str(folder), files=files)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_missing_column_names_column(tmp_path):
    write(tmp_path, "events.csv", "user_id,item_id,time\nu1,i1,10\n")
    with pytest.raises(DataFormatError, match=r"events\.csv, column 'timestamp': required column 'timestamp' is missing .*Fix: .*time_column") as caught:
        read_dataset(table_config(tmp_path, interactions="events.csv"))
    assert caught.value.column == "timestamp"


def test_non_numeric_timestamp_names_line(tmp_path):
    write(tmp_path, "events.csv", "user_id,item_id,timestamp\nu1,i1,10\nu1,i2,yesterday\n")
    with pytest.raises(DataFormatError, match=r"events\.csv, line 3, column 'timestamp': timestamp='yesterday' is not an integer\. Fix: ") as caught:
        read_dataset(table_config(tmp_path, interactions="events.csv"))
    assert caught.value.line == 3


def test_empty_file_is_rejected(tmp_path):
    write(tmp_path, "events.csv", "")
    with pytest.raises(DataFormatError, match=r"events\.csv: the file is empty\. Fix: "):
        read_dataset(table_config(tmp_path, interactions="events.csv"))


def test_header_without_rows_is_rejected(tmp_path):
    write(tmp_path, "events.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(DataFormatError, match=r"events\.csv, line 1: the file has a header but no data rows"):
        read_dataset(table_config(tmp_path, interactions="events.csv"))


def test_truncated_last_record_names_line(tmp_path):
    write(tmp_path, "events.csv", EVENTS + "u2,i2")
    with pytest.raises(DataFormatError, match=r"events\.csv, line 5: the last record is cut short .*Fix: the file is truncated") as caught:
        read_dataset(table_config(tmp_path, interactions="events.csv"))
    assert caught.value.line == 5


def test_short_record_names_line(tmp_path):
    write(tmp_path, "events.csv", "user_id,item_id,timestamp\nu1,i1,10\nu1,i2\nu2,i1,30\n")
    with pytest.raises(DataFormatError, match=r"events\.csv, line 3: the record has 2 fields but the header on line 1 has 3"):
        read_dataset(table_config(tmp_path, interactions="events.csv"))


def test_truncated_gzip_is_rejected(tmp_path):
    compressed = gzip.compress((EVENTS * 200).encode())
    (tmp_path / "events.csv.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataFormatError, match=r"events\.csv\.gz: the gzip stream is truncated or corrupt .*Fix: download or compress the file again"):
        read_dataset(table_config(tmp_path, interactions="events.csv.gz"))


def test_truncated_json_line_names_line(tmp_path):
    write(tmp_path, "seq.txt", "u1 i1 i2\n")
    write(tmp_path, "items.jsonl", '{"item_id": "i1", "title": "A"}\n{"item_id": "i2", "ti')
    cfg = DatasetConfig(name="tiny", format="p5", path=str(tmp_path), files={"sequences": "seq.txt", "items": "items.jsonl"}, options={"title_field": "title"})
    with pytest.raises(DataFormatError, match=r"items\.jsonl, line 2: the last line is cut short\. Fix: the file is truncated"):
        read_dataset(cfg)


def test_comma_file_read_as_tsv(tmp_path):
    write(tmp_path, "events.tsv", EVENTS)
    with pytest.raises(DataFormatError, match=r"events\.tsv, line 1: the line splits on '\\t' into one field; it looks delimited by ','\. Fix: .*set dataset\.options\.delimiter"):
        read_dataset(table_config(tmp_path, interactions="events.tsv"))


def test_headerless_file_with_wrong_delimiter(tmp_path):
    write(tmp_path, "ratings.csv", "B000A\tU1\t5.0\t1500000000\n")
    cfg = DatasetConfig(name="tiny", format="amazon2018", path=str(tmp_path), files={"ratings": "ratings.csv"})
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 1: the line splits on ',' into one field instead of 4; it looks delimited by '\\t'"):
        read_dataset(cfg)


def test_duplicate_item_id_names_both_lines(tmp_path):
    write(tmp_path, "events.csv", EVENTS)
    write(tmp_path, "items.csv", "item_id,title\ni1,Mug\ni2,Plate\ni1,Cup\n")
    with pytest.raises(DataFormatError, match=r"items\.csv, line 4, column 'item_id': item_id 'i1' appears again \(first on line 2\)\. Fix: keep one row per item_id"):
        read_dataset(table_config(tmp_path, interactions="events.csv", items="items.csv"))


def test_duplicate_asin_in_amazon_meta(tmp_path):
    write(tmp_path, "ratings.csv", "B000A,U1,5.0,1500000000\n")
    meta = [{"asin": "B000A", "title": "One"}, {"asin": "B000A", "title": "Two"}]
    write(tmp_path, "meta.json", "".join(json.dumps(record) + "\n" for record in meta))
    files = {"ratings": "ratings.csv", "meta": "meta.json"}
    with pytest.raises(DataFormatError, match=r"meta\.json, line 2, column 'item_id': .*Fix: .*meta_duplicates=first"):
        read_dataset(DatasetConfig(name="tiny", format="amazon2018", path=str(tmp_path), files=files))

    kept = read_dataset(DatasetConfig(name="tiny", format="amazon2018", path=str(tmp_path), files=files, options={"meta_duplicates": "first"}))
    assert kept.items["title"].to_list() == ["One"]


def test_duplicate_user_line_in_sequences(tmp_path):
    write(tmp_path, "seq.txt", "u1 i1 i2\nu2 i1\nu1 i3\n")
    cfg = DatasetConfig(name="tiny", format="p5", path=str(tmp_path), files={"sequences": "seq.txt"})
    with pytest.raises(DataFormatError, match=r"seq\.txt, line 3, column 'user_id': user_id 'u1' appears again \(first on line 1\)"):
        read_dataset(cfg)


def test_movietweetings_bad_rating_line(tmp_path):
    write(tmp_path, "ratings.dat", "1::0000001::7::1365029107\n2::0000002::8\n")
    write(tmp_path, "movies.dat", "0000001::A (1999)::Drama\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat, line 2: the record has 3 fields but expected 4: user_id, item_id, rating, timestamp\."):
        read_dataset(DatasetConfig(name="tiny", format="movietweetings", path=str(tmp_path)))


def test_recbole_non_numeric_rating(tmp_path):
    write(tmp_path, "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\tgood\t881250949\n")
    cfg = DatasetConfig(name="tiny", format="recbole", path=str(tmp_path), files={"inter": "x.inter"})
    with pytest.raises(DataFormatError, match=r"x\.inter, line 2, column 'rating': rating='good' is not a number"):
        read_dataset(cfg)


def test_missing_file_names_path_and_key(tmp_path):
    cfg = table_config(tmp_path, interactions="nowhere.csv")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv: file not found \(config key dataset\.files\.interactions='nowhere\.csv'"):
        read_dataset(cfg)
    with pytest.raises(FileNotFoundError, match=r"dataset\.files\.interactions"):
        resolve_files(cfg)


def test_unknown_option_is_rejected(tmp_path):
    write(tmp_path, "events.csv", EVENTS)
    cfg = DatasetConfig(name="tiny", format="table", path=str(tmp_path), files={"interactions": "events.csv"}, options={"delimeter": ","})
    with pytest.raises(ValueError, match=r"unknown keys \['delimeter'\] for format 'table'"):
        read_dataset(cfg)


def test_unisrec_rows_that_do_not_chain(tmp_path):
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    write(tmp_path, "T.train.inter", header + "0\t0\t1\n0\t0 1\t2\n")
    write(tmp_path, "T.valid.inter", header + "0\t1 2\t3\n")
    write(tmp_path, "T.test.inter", header + "0\t3 9\t4\n")  # history should be "2 3"
    write(tmp_path, "T.item2index", "".join(f"A{item}\t{item}\n" for item in range(10)))
    write(tmp_path, "T.user2index", "U0\t0\n")
    write(tmp_path, "T.text", "item_id:token\ttext:token_seq\nA0\tx\n")
    files = {role: f"T.{role}" for role in ("text", "item2index", "user2index")} | {split: f"T.{split}.inter" for split in ("train", "valid", "test")}
    with pytest.raises(DataFormatError, match=r"T\.train\.inter: the rows of user 0 do not chain into one sequence \(4 items rebuilt from 4 rows\)"):
        read_dataset(DatasetConfig(name="tiny", format="unisrec", path=str(tmp_path), files=files))


def test_unbalanced_quote_names_line(tmp_path):
    write(tmp_path, "events.csv", EVENTS)
    write(tmp_path, "items.csv", 'item_id,title\ni1,"Mug\ni2,Plate\n')
    with pytest.raises(DataFormatError, match=r"items\.csv, line 2: invalid quoting .*Fix: close the open quote"):
        read_dataset(table_config(tmp_path, interactions="events.csv", items="items.csv"))
