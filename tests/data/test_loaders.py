"""Loaders: real files (skipped when ../shared/data is absent), formats, malformed lines, splits."""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from recsys_kernels.data import (
    CTRData, MalformedLineError, MalformedLinesSkipped, Ratings, Sequences, criteo, detect_format,
    kfold_ratings, load_amazon_sequences, load_criteo, load_dataset, load_movielens, load_movielens_titles,
    ratings_to_sequences,
)
from recsys_kernels.data._criteo_fast import parse_block
from recsys_kernels.data.criteo import CSV_HEADER, KAGGLE_CARDINALITIES, default_table_sizes


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------- real files


def test_ml100k_counts_and_mapping(real_path):
    r = load_movielens(real_path("ml-100k"))
    assert (len(r), r.num_users, r.num_items) == (100_000, 943, 1682)
    assert r.users.dtype == r.items.dtype == r.timestamps.dtype == np.int64 and r.ratings.dtype == np.float32
    assert r.users.min() == 0 and r.users.max() == 942 and r.items.max() == 1681
    np.testing.assert_array_equal(r.user_ids, np.arange(1, 944))  # ML-100K ids are already 1..943
    # first line of u.data: 196 242 3 881250949
    assert (r.user_ids[r.users[0]], r.item_ids[r.items[0]], r.ratings[0], r.timestamps[0]) == (196, 242, 3.0, 881250949)
    assert set(np.unique(r.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0} and r.skipped_lines == 0


def test_ml100k_titles(real_path):
    titles = load_movielens_titles(real_path("ml-100k"))
    assert len(titles) == 1682 and titles[1] == "Toy Story (1995)"
    assert titles[1682] == "Scream of Stone (Schrei aus Stein) (1991)"


def test_ml100k_sequences_are_time_ordered(real_path):
    real_path("ml-100k")
    seqs = load_dataset("ml-100k-seq")
    assert len(seqs) == 943 and seqs.num_items == 1682
    assert sum(len(s) for s in seqs.sequences) == 100_000
    assert all(np.all(np.diff(t) >= 0) for t in seqs.timestamps)
    assert min(s.min() for s in seqs.sequences) >= 1 and max(s.max() for s in seqs.sequences) == 1682


def test_beauty(real_path):
    seqs = load_amazon_sequences(real_path("amazon/Beauty.txt"))
    assert (len(seqs), seqs.num_items, seqs.timestamps) == (22_363, 12_101, None)
    assert min(len(s) for s in seqs.sequences) >= 5  # 5-core
    np.testing.assert_array_equal(seqs.sequences[0], [1, 2, 3, 4, 5])  # line 1: "1 1 2 3 4 5"
    train, valid, test = seqs.leave_one_out()
    assert len(train) == len(valid) == len(test) == 22_363
    assert test.targets[0] == 5 and valid.targets[0] == 4 and train.targets[0] == 3
    np.testing.assert_array_equal(test.inputs[0], [1, 2, 3, 4])


def test_criteo_sample(real_path):
    data = load_criteo(real_path("criteo/criteo_sample.txt"))
    assert data.dense.shape == (200, 13) and data.sparse.shape == (200, 26) and data.labels.shape == (200,)
    assert data.dense.dtype == np.float32 and data.sparse.dtype == np.int64 and data.labels.dtype == np.float32
    assert set(np.unique(data.labels)) == {0.0, 1.0}
    assert data.table_sizes == default_table_sizes()
    assert (data.sparse >= 0).all() and (data.sparse < np.array(data.table_sizes)).all()
    # row 1: label 0, I1 empty, I2 = 3, I3 = 260.0, ...; C1 = 05db9164, C20 empty
    assert data.labels[0] == 0 and data.dense[0, 0] == 0
    assert data.dense[0, 1] == np.float32(math.log1p(3)) and data.dense[0, 2] == np.float32(math.log1p(260))
    assert data.sparse[0, 0] == 1 + int("05db9164", 16) % (1460 - 1)
    assert data.sparse[0, 19] == 0
    # row 2 has I2 = -1: clamped to 0 before the log
    assert data.dense[1, 1] == 0


def test_kaggle_cardinalities():
    assert len(KAGGLE_CARDINALITIES) == 26 and sum(KAGGLE_CARDINALITIES) == 33_762_577
    assert max(default_table_sizes()) == 4_000_000 and default_table_sizes(100)[8] == 3


# ---------------------------------------------------------------- MovieLens formats

ROWS = [(10, 5, 4.0, 300), (7, 5, 3.5, 100), (10, 9, 1.0, 100), (3, 2, 5.0, 200)]


def test_movielens_three_formats_agree(tmp_path):
    udata = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t{int(r) if r.is_integer() else r}\t{t}\n" for u, i, r, t in ROWS))
    dat = write(tmp_path, "ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS))
    csv_dir = tmp_path / "ml-20m"
    csv_dir.mkdir()
    write(csv_dir, "ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS))
    loaded = [load_movielens(udata), load_movielens(dat), load_movielens(csv_dir)]
    for r in loaded:
        np.testing.assert_array_equal(r.user_ids, [3, 7, 10])
        np.testing.assert_array_equal(r.item_ids, [2, 5, 9])
        np.testing.assert_array_equal(r.users, [2, 1, 2, 0])
        np.testing.assert_array_equal(r.items, [1, 1, 2, 0])
        np.testing.assert_array_equal(r.ratings, [4.0, 3.5, 1.0, 5.0])
        np.testing.assert_array_equal(r.timestamps, [300, 100, 100, 200])
        assert (r.num_users, r.num_items) == (3, 3)


def test_movielens_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path, "u.data", "1\t1\t5\t10\r\n\r\n2\t3\t4\t20\r\n")
    r = load_movielens(path)
    assert len(r) == 2 and r.skipped_lines == 0


@pytest.mark.parametrize("bad_line, reason", [
    ("5\t6\t3", "expected 4 fields"),
    ("5\tsix\t3\t100", "item id 'six' is not an integer"),
    ("5\t6\tgood\t100", "rating 'good' is not a number"),
    ("5\t6\tnan\t100", "not finite"),
    ("5\t99999999999999999999\t3\t100", "does not fit in int64"),
])
def test_movielens_malformed_line_named(tmp_path, bad_line, reason):
    path = write(tmp_path, "u.data", f"1\t1\t5\t10\n2\t3\t4\t20\n{bad_line}\n4\t4\t4\t40\n")
    with pytest.raises(MalformedLineError, match=reason) as err:
        load_movielens(path)
    assert err.value.line_number == 3 and err.value.path == str(path)
    assert str(err.value).startswith(f"{path}:3: ")
    with pytest.warns(MalformedLinesSkipped, match="skipped 1 malformed line") as caught:
        r = load_movielens(path, on_error="skip")
    assert len(caught) == 1
    assert r.skipped_lines == 1 and len(r) == 3
    np.testing.assert_array_equal(r.user_ids[r.users], [1, 2, 4])


def test_movielens_skip_counts_every_bad_line(tmp_path):
    path = write(tmp_path, "ratings.dat", "1::1::5::10\nx::1::5::10\n2::2::4::20\n3::3\n\n4::4::4::4::4\n")
    with pytest.raises(MalformedLineError, match=r"ratings.dat:2: user id 'x'"):
        load_movielens(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = load_movielens(path, on_error="skip")
    assert r.skipped_lines == 3 and len(r) == 2
    assert len(caught) == 1 and "skipped 3" in str(caught[0].message) and "first at line 2" in str(caught[0].message)


def test_movielens_bad_csv_header_and_options(tmp_path):
    path = write(tmp_path, "ratings.csv", "userId,itemId,rating,timestamp\n1,1,5,10\n")
    with pytest.raises(MalformedLineError, match=":1: CSV header"):
        load_movielens(path)
    with pytest.raises(ValueError, match="on_error"):
        load_movielens(path, on_error="ignore")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="none of"):
        load_movielens(empty)


def test_movielens_titles_formats(tmp_path):
    dat = write(tmp_path, "movies.dat", "1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n", "latin-1")
    assert load_movielens_titles(dat) == {1: "Toy Story (1995)", 2: "Jumanji (1995)"}
    csv = write(tmp_path, "movies.csv", 'movieId,title,genres\n11,"American President, The (1995)",Comedy\n12,Dracula,Horror\n')
    assert load_movielens_titles(csv) == {11: "American President, The (1995)", 12: "Dracula"}
    item = write(tmp_path, "u.item", "5|Caf\xe9 (1995)|01-Jan-1995||url|0\nbad|x\n", "latin-1")
    with pytest.raises(MalformedLineError, match=r"u.item:2: movie id 'bad'"):
        load_movielens_titles(item)


# ---------------------------------------------------------------- Amazon sequences


def test_amazon_parse(tmp_path):
    path = write(tmp_path, "seq.txt", "1 4 2 3\n\n2 1\n7 5 5 6\n")
    seqs = load_amazon_sequences(path)
    assert seqs.num_items == 6 and len(seqs) == 3
    np.testing.assert_array_equal(seqs.user_ids, [1, 2, 7])
    assert [s.tolist() for s in seqs.sequences] == [[4, 2, 3], [1], [5, 5, 6]]


@pytest.mark.parametrize("bad_line, reason", [
    ("3 1 x 2", "id 'x' is not an integer"),
    ("3 1 99999999999999999999", "id '99999999999999999999' is not an integer in int64 range"),
    ("3 1 0 2", "item id 0 is not >= 1"),
    ("3", "user 3 has no items"),
    ("1 2 3", "user 1 already appeared on line 1"),
])
def test_amazon_malformed(tmp_path, bad_line, reason):
    path = write(tmp_path, "seq.txt", f"1 1 2\n2 2 3\n{bad_line}\n4 4\n")
    with pytest.raises(MalformedLineError, match=f"seq.txt:3: {reason}"):
        load_amazon_sequences(path)
    with pytest.warns(MalformedLinesSkipped):
        seqs = load_amazon_sequences(path, on_error="skip")
    assert seqs.skipped_lines == 1 and len(seqs) == 3


# ---------------------------------------------------------------- Criteo


def criteo_line(rng: np.random.Generator, sep: str = "\t") -> str:
    label = str(rng.integers(0, 2))
    dense = ["" if rng.random() < 0.2 else str(rng.integers(-3, 100_000)) if rng.random() < 0.7
             else f"{rng.integers(-3, 10_000)}.{rng.integers(0, 100)}" for _ in range(13)]
    cats = ["" if rng.random() < 0.15 else f"{rng.integers(0, 2**32):08x}" for _ in range(26)]
    return sep.join([label] + dense + cats)


def expected_row(line: str, sep: str, sizes: list[int]) -> tuple[float, list[float], list[int]]:
    fields = line.split(sep)
    dense = [math.log1p(max(float(f), 0.0)) if f else 0.0 for f in fields[1:14]]
    sparse = [1 + int(f, 16) % (s - 1) if f else 0 for f, s in zip(fields[14:], sizes)]
    return float(fields[0]), dense, sparse


def test_criteo_matches_python_reference(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.integers(2, 5000, 26)]
    lines = [criteo_line(rng) for _ in range(300)]
    tsv = write(tmp_path, "day_0", "\n".join(lines) + "\n")
    csv = write(tmp_path, "sample.csv", CSV_HEADER + "\n" + "\n".join(line.replace("\t", ",") for line in lines))
    gz = tmp_path / "day_1.gz"
    gz.write_bytes(gzip.compress(tsv.read_bytes()))
    for path in (tsv, csv, gz):
        data = load_criteo(path, table_sizes=sizes)
        assert len(data) == 300 and data.table_sizes == sizes
        for i in (0, 1, 57, 299):
            label, dense, sparse = expected_row(lines[i], "\t", sizes)
            assert data.labels[i] == label
            np.testing.assert_array_equal(data.dense[i], np.asarray(dense, dtype=np.float32))
            np.testing.assert_array_equal(data.sparse[i], sparse)


def test_criteo_fast_and_rowwise_paths_agree(tmp_path):
    rng = np.random.default_rng(1)
    lines = [criteo_line(rng) for _ in range(200)]
    modulus = np.asarray(default_table_sizes(1000)) - 1
    rowwise = criteo._convert([line.encode().split(b"\t") for line in lines], modulus)
    data = ("\n".join(lines) + "\n").encode()
    assert parse_block(data, b"\t", 13, 26, criteo._HEX, modulus) is not None  # the vectorised path is taken
    fast = load_criteo(write(tmp_path, "day", data.decode()), table_size_cap=1000)
    np.testing.assert_array_equal(fast.labels, rowwise[0])
    np.testing.assert_array_equal(fast.dense, rowwise[1])
    np.testing.assert_array_equal(fast.sparse, rowwise[2])


def test_criteo_long_hex_values(tmp_path):
    line = "\t".join(["1"] + ["1"] * 13 + ["ffffffffffffffffff"] + ["abc"] * 25)
    data = load_criteo(write(tmp_path, "day", line + "\n"), table_size_cap=1000)
    assert data.sparse[0, 0] == 1 + int("ffffffffffffffffff", 16) % 999
    assert data.sparse[0, 1] == 1 + int("abc", 16) % 582


@pytest.mark.parametrize("bad, reason", [
    (lambda f: f[:-1], "expected 40 tab-separated fields"),
    (lambda f: f[:14] + ["xyz"] + f[15:], "C1 'xyz' is not hexadecimal"),
    (lambda f: ["2"] + f[1:], "label '2' is not 0 or 1"),
    (lambda f: f[:3] + ["1e"] + f[4:], "I3 '1e' is not a number"),
])
def test_criteo_malformed(tmp_path, bad, reason):
    rng = np.random.default_rng(2)
    lines = [criteo_line(rng) for _ in range(5)]
    lines[3] = "\t".join(bad(lines[3].split("\t")))
    path = write(tmp_path, "day", "\n".join(lines) + "\n")
    with pytest.raises(MalformedLineError, match=f"day:4: {reason}"):
        load_criteo(path)
    with pytest.warns(MalformedLinesSkipped, match="skipped 1"):
        data = load_criteo(path, on_error="skip")
    clean = load_criteo(write(tmp_path, "clean", "\n".join(lines[:3] + lines[4:]) + "\n"))
    assert data.skipped_lines == 1 and len(data) == 4
    np.testing.assert_array_equal(data.sparse, clean.sparse)
    np.testing.assert_array_equal(data.dense, clean.dense)


def test_criteo_header_and_options(tmp_path):
    rng = np.random.default_rng(3)
    lines = [criteo_line(rng, ",") for _ in range(10)]
    bad_header = write(tmp_path, "s.csv", CSV_HEADER.replace("C26", "C27") + "\n" + "\n".join(lines))
    with pytest.raises(MalformedLineError, match="s.csv:1: CSV header"):
        load_criteo(bad_header)
    good = write(tmp_path, "g.csv", CSV_HEADER + "\n" + "\n".join(lines) + "\n")
    assert len(load_criteo(good, max_rows=7)) == 7
    assert len(load_criteo(good, max_rows=0)) == 0
    with pytest.raises(ValueError, match="table_sizes"):
        load_criteo(good, table_sizes=[10] * 25)
    with pytest.raises(ValueError, match="table_sizes"):
        load_criteo(good, table_sizes=[1] * 26)


# ---------------------------------------------------------------- conversions and splits


def small_ratings() -> Ratings:
    # user 0: items 2 (t=5), 0 (t=1), 1 (t=5)  -> by time: 0, then 2 and 1 in file order
    return Ratings(users=np.array([0, 1, 0, 0, 2]), items=np.array([2, 0, 0, 1, 1]),
                   ratings=np.ones(5, np.float32), timestamps=np.array([5, 3, 1, 5, 9]),
                   num_users=3, num_items=3, user_ids=np.array([10, 20, 30]), item_ids=np.array([7, 8, 9]))


def test_ratings_to_sequences_stable_time_order():
    seqs = ratings_to_sequences(small_ratings())
    assert [s.tolist() for s in seqs.sequences] == [[1, 3, 2], [1], [2]]
    assert [t.tolist() for t in seqs.timestamps] == [[1, 5, 5], [3], [9]]
    np.testing.assert_array_equal(seqs.user_ids, [10, 20, 30])
    longer = ratings_to_sequences(small_ratings(), min_length=2)
    assert len(longer) == 1 and longer.user_ids.tolist() == [10]


def test_leave_one_out_rules():
    seqs = Sequences(sequences=[np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([8]), np.array([9, 1, 2]),
                                np.array([], dtype=np.int64)],
                     num_items=9, timestamps=[np.arange(5), np.arange(2), np.arange(1), np.arange(3) + 10,
                                              np.array([], dtype=np.int64)])
    train, valid, test = seqs.leave_one_out()
    assert train.users.tolist() == [0, 1, 2, 3] and valid.users.tolist() == test.users.tolist() == [0, 3]
    assert [x.tolist() for x in train.inputs] == [[1, 2], [6], [], []]
    assert train.targets.tolist() == [3, 7, 8, 9]
    assert [x.tolist() for x in valid.inputs] == [[1, 2, 3], [9]] and valid.targets.tolist() == [4, 1]
    assert [x.tolist() for x in test.inputs] == [[1, 2, 3, 4], [9, 1]] and test.targets.tolist() == [5, 2]
    assert test.target_timestamps.tolist() == [4, 12] and test.input_timestamps[1].tolist() == [10, 11]
    assert all(s.num_items == 9 for s in (train, valid, test))
    no_time = Sequences(sequences=seqs.sequences, num_items=9).leave_one_out()
    assert no_time[2].input_timestamps is None and no_time[2].target_timestamps is None


def test_kfold_partitions_rows():
    r = load_dataset("synthetic-ratings")
    folds = kfold_ratings(r, k=5, seed=3)
    assert len(folds) == 5
    seen = []
    for train, test in folds:
        assert len(train) + len(test) == len(r) and abs(len(test) - len(r) / 5) <= 1
        assert train.num_users == test.num_users == r.num_users
        keys_train = set(zip(train.users.tolist(), train.items.tolist()))
        keys_test = set(zip(test.users.tolist(), test.items.tolist()))
        assert not keys_train & keys_test  # synthetic pairs are unique, so rows are disjoint
        seen.extend(keys_test)
    assert len(seen) == len(set(seen)) == len(r)
    again = kfold_ratings(r, k=5, seed=3)
    np.testing.assert_array_equal(again[2][1].users, folds[2][1].users)
    with pytest.raises(ValueError):
        kfold_ratings(r, k=1)


def test_ctr_split():
    data = load_dataset("synthetic-ctr", num_samples=1000, table_sizes=(50,) * 4)
    train, valid, test = data.split((0.7, 0.2, 0.1), seed=1)
    assert (len(train), len(valid), len(test)) == (700, 200, 100)
    assert train.table_sizes == data.table_sizes and test.planted_probs.shape == (100,)
    rows = np.concatenate([part.dense for part in (train, valid, test)])
    assert np.unique(rows, axis=0).shape[0] == np.unique(data.dense, axis=0).shape[0]
    with pytest.raises(ValueError, match="fractions"):
        data.split((0.5, 0.2, 0.2))


# ---------------------------------------------------------------- registry


def test_load_dataset_names_and_detection(tmp_path, monkeypatch):
    assert isinstance(load_dataset("synthetic-seq", num_users=10), Sequences)
    assert isinstance(load_dataset("Synthetic-CTR", num_samples=10), CTRData)
    seq_file = write(tmp_path, "seqs.txt", "1 1 2\n2 2 3\n")
    ml_file = write(tmp_path, "ratings.dat", "1::1::5::10\n")
    assert detect_format(seq_file) == "amazon" and isinstance(load_dataset(str(seq_file)), Sequences)
    assert detect_format(ml_file) == "movielens" and isinstance(load_dataset(str(ml_file)), Ratings)
    with pytest.raises(ValueError, match="neither a data set name"):
        load_dataset("no-such-set")
    # the env var moves the data root
    (tmp_path / "criteo").mkdir()
    rng = np.random.default_rng(4)
    write(tmp_path / "criteo", "criteo_sample.txt", CSV_HEADER + "\n" + "\n".join(criteo_line(rng, ",") for _ in range(3)))
    monkeypatch.setenv("RECSYS_KERNELS_DATA", str(tmp_path))
    assert len(load_dataset("criteo-sample")) == 3
    with pytest.raises(FileNotFoundError, match="beauty"):
        load_dataset("beauty")
