"""Data sets by name or path: ``load_dataset("beauty")``, ``load_dataset("/data/ml-1m")``.

Real data sets resolve relative to the data root: the env var ``RECSYS_KERNELS_DATA``, else the first
``shared/data`` folder found walking up from this package and then from the working directory (the
workplace keeps the real files in ``../shared/data`` beside the repo; they are never copied into it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from recsys_kernels.data._io import open_binary
from recsys_kernels.data.amazon import load_amazon_sequences
from recsys_kernels.data.criteo import load_criteo
from recsys_kernels.data.movielens import RATING_FILES, load_movielens
from recsys_kernels.data.sequences import ratings_to_sequences
from recsys_kernels.data.synthetic import synthetic_ctr, synthetic_ratings, synthetic_sequences
from recsys_kernels.data.types import CTRData, Ratings, Sequences

Dataset = Ratings | Sequences | CTRData
DATA_ENV = "RECSYS_KERNELS_DATA"

SYNTHETIC: dict[str, Callable[..., Dataset]] = {
    "synthetic-seq": synthetic_sequences,
    "synthetic-ratings": synthetic_ratings,
    "synthetic-ctr": synthetic_ctr,
}
# name -> (path under the data root, loader of that path)
REAL: dict[str, tuple[str, Callable[..., Dataset]]] = {
    "ml-100k": ("ml-100k", load_movielens),
    "ml-100k-seq": ("ml-100k", lambda p, **kw: ratings_to_sequences(load_movielens(p, **kw))),
    "ml-1m": ("ml-1m", load_movielens),
    "ml-1m-seq": ("ml-1m", lambda p, **kw: ratings_to_sequences(load_movielens(p, **kw))),
    "beauty": ("amazon/Beauty.txt", load_amazon_sequences),
    "criteo-sample": ("criteo/criteo_sample.txt", load_criteo),
}
DATASETS = tuple(SYNTHETIC) + tuple(REAL)


def data_root() -> Path | None:
    """The folder real data sets are read from, or None when there is none."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def dataset_path(name: str) -> Path:
    """Where the real data set ``name`` lives; FileNotFoundError naming the place looked at when absent."""
    relative, _ = REAL[name]
    root = data_root()
    if root is None:
        raise FileNotFoundError(f"data set {name!r} needs the real data: set {DATA_ENV} to the folder holding "
                                f"{relative} (no shared/data folder found above {Path(__file__).parent})")
    path = root / relative
    if not path.exists():
        raise FileNotFoundError(f"data set {name!r}: {path} does not exist (data root {root}, from {DATA_ENV} "
                                f"or the shared/data folder above the repo)")
    return path


def detect_format(path: str | os.PathLike) -> str:
    """'movielens', 'criteo' or 'amazon' from a directory's files or a file's first line."""
    path = Path(path)
    if path.is_dir():
        if any((path / f).is_file() for f in RATING_FILES):
            return "movielens"
        raise ValueError(f"{path}: a directory must hold one of {', '.join(RATING_FILES)}")
    with open_binary(path) as f:
        first = f.readline().rstrip(b"\r\n")
    if first.startswith(b"label"):
        return "criteo"
    if first.startswith(b"userId") or b"::" in first:
        return "movielens"
    fields = first.split(b"\t")
    if len(fields) == 40:
        return "criteo"
    if len(fields) == 4 or len(first.split(b",")) == 4:
        return "movielens"
    if first.split() and all(tok.isdigit() for tok in first.split()):
        return "amazon"
    raise ValueError(f"{path}: cannot tell the format from the first line {first[:80]!r}")


def load_dataset(name_or_path: str | os.PathLike, **kwargs) -> Dataset:
    """A data set by name (``DATASETS``) or from a path (format detected); ``kwargs`` go to the loader/generator.

    Names: synthetic-seq, synthetic-ratings, synthetic-ctr (built in); ml-100k (Ratings), ml-100k-seq
    (Sequences by timestamp), ml-1m, ml-1m-seq, beauty (Sequences), criteo-sample (CTRData) from the data root.
    """
    key = str(name_or_path)
    if key.lower() in SYNTHETIC:
        return SYNTHETIC[key.lower()](**kwargs)
    if key.lower() in REAL:
        _, loader = REAL[key.lower()]
        return loader(dataset_path(key.lower()), **kwargs)
    path = Path(key).expanduser()
    if not path.exists():
        raise ValueError(f"{key!r} is neither a data set name ({', '.join(DATASETS)}) nor an existing path")
    loaders = {"movielens": load_movielens, "criteo": load_criteo, "amazon": load_amazon_sequences}
    return loaders[detect_format(path)](path, **kwargs)
