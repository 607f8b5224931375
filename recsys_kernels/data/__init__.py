"""Data sets for the models: real-data loaders, synthetic generators with planted structure, splits.

    from recsys_kernels.data import load_dataset
    seqs = load_dataset("beauty")                 # Sequences; .leave_one_out() -> train, valid, test
    ratings = load_dataset("ml-100k")             # Ratings; kfold_ratings(ratings, 5)
    ctr = load_dataset("synthetic-ctr")           # CTRData; .split() -> train, valid, test

Shapes: :class:`Ratings` (dense 0-based user/item ids), :class:`Sequences` (item ids 1..num_items, 0 pads),
:class:`CTRData` (log-transformed dense, hashed categorical ids, 0 = missing). Loaders raise
:class:`MalformedLineError` naming file and line, or with ``on_error="skip"`` count skipped lines in
``skipped_lines`` and warn once (:class:`MalformedLinesSkipped`). numpy only; no torch, no pandas.
"""

from recsys_kernels.data._io import MalformedLineError, MalformedLinesSkipped
from recsys_kernels.data.amazon import load_amazon_sequences
from recsys_kernels.data.criteo import KAGGLE_CARDINALITIES, default_table_sizes, load_criteo
from recsys_kernels.data.movielens import load_movielens, load_movielens_titles
from recsys_kernels.data.registry import DATA_ENV, DATASETS, data_root, dataset_path, detect_format, load_dataset
from recsys_kernels.data.sequences import ratings_to_sequences
from recsys_kernels.data.synthetic import kfold_ratings, synthetic_ctr, synthetic_ratings, synthetic_sequences
from recsys_kernels.data.types import CTRData, Ratings, Sequences, SequenceSplit

__all__ = [
    "CTRData", "DATA_ENV", "DATASETS", "KAGGLE_CARDINALITIES", "MalformedLineError", "MalformedLinesSkipped",
    "Ratings", "SequenceSplit", "Sequences", "data_root", "dataset_path", "default_table_sizes", "detect_format",
    "kfold_ratings", "load_amazon_sequences", "load_criteo", "load_dataset", "load_movielens",
    "load_movielens_titles", "ratings_to_sequences", "synthetic_ctr", "synthetic_ratings", "synthetic_sequences",
]
