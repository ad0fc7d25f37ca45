"""Fixtures of the ingest tests (helpers live in ingest_helpers.py)."""

from typing import Callable

import pytest
from ingest_helpers import Ingested, ingest_into


@pytest.fixture
def ingest(tmp_path) -> Callable[..., Ingested]:
    """`ingest(source=..., path=..., **data_params)` → what the stage wrote (max_sessions 0 = all)."""
    counter = iter(range(1000))
    return lambda **data: ingest_into(tmp_path / f"run{next(counter)}", **data)
