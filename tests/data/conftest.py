"""Fixtures for the data tests: files of the real-data folder, skipping cleanly when absent."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from recsys_kernels.data import data_root


@pytest.fixture(scope="session")
def real_path() -> Callable[[str], Path]:
    """``real_path("amazon/Beauty.txt")``: that file under ../shared/data (or RECSYS_KERNELS_DATA), else skip."""

    def find(relative: str) -> Path:
        root = data_root()
        if root is None or not (root / relative).exists():
            pytest.skip(f"real data {relative} is absent (../shared/data or RECSYS_KERNELS_DATA)")
        return root / relative

    return find
