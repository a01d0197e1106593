"""Each conf/dataset config, loaded through load_processed, gives the counts its dataset README states."""

from pathlib import Path

import pytest

from ttds.data.pipeline import load_dataset_config, load_processed
from ttds.paths import CONF_DIR

# (users, items, interactions) from each dataset's README: the 5-core counts where the README gives them, the raw
# counts for MovieLens 100K, whose config turns the k-core off.
README_COUNTS = {
    "movietweetings_100k": (4_333, 2_414, 68_055),
    "online_retail": (4_074, 3_143, 264_444),
    "amazon18_scientific": (8_442, 4_385, 59_427),
    "amazon14_beauty": (22_363, 12_101, 198_502),
    "amazon14_sports": (35_598, 18_357, 296_337),
    "amazon14_toys": (19_412, 11_924, 167_597),
    "yelp_p5": (30_431, 20_033, 316_354),
    "movielens_100k": (943, 1_682, 100_000),
}


def test_every_dataset_config_has_expected_counts():
    configs = sorted(path.stem for path in (CONF_DIR / "dataset").glob("*.yaml"))
    assert configs == sorted(README_COUNTS)


def test_unknown_dataset_config_raises():
    with pytest.raises(FileNotFoundError, match=r"no_such_set.yaml: dataset config not found; use one of \["):
        load_dataset_config("no_such_set")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_processed_counts_match_readme(name, tmp_path):
    cfg = load_dataset_config(name)
    if not Path(cfg.path).is_dir():
        pytest.skip(f"{cfg.path} is not on this machine; set TTDS_SHARED_DATA to the folder holding the datasets")

    ds = load_processed(cfg, tmp_path)
    users, items, interactions = README_COUNTS[name]
    assert ds.n_users == users
    assert ds.n_items == items
    assert ds.events.height == interactions
    assert ds.stats["users"] == users
    assert sum(entry["users"] for entry in ds.stats["users_by_length"].values()) == users
