"""Reading a store's Parquet tables: whole or a range of rows, and columns to NumPy; each problem
is a ``StoreError`` naming the file (``ingest.store``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.errors import StoreError

__all__ = ["check_range", "float32_column", "nan_filled", "read_rows", "read_table"]


def read_table(path: Path, columns: list[str] | None) -> pa.Table:
    """The Parquet table at ``path`` (``columns`` only, where given), memory-mapped; StoreError
    naming the file where it cannot be read."""
    try:
        return pq.read_table(path, columns=columns, memory_map=True)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{path}: cannot be read ({err})") from None


def read_rows(path: Path, columns: list[str] | None, lo: int, hi: int) -> pa.Table:
    """Rows ``lo:hi`` of the Parquet table at ``path`` (``columns`` only, where given), reading
    only the row groups that hold them; StoreError naming the file where it cannot be read."""
    try:
        f = pq.ParquetFile(path, memory_map=True)
        groups, at, first = [], 0, None
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            if at < hi and at + n > lo:
                first = at if first is None else first
                groups.append(g)
            at += n
        if not groups:
            return f.schema_arrow.empty_table().select(columns or f.schema_arrow.names)
        return f.read_row_groups(groups, columns=columns).slice(lo - first, hi - lo)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{path}: cannot be read ({err})") from None


def check_range(path: Path, column: str, values: np.ndarray, low: int, high: int) -> None:
    """StoreError naming the file, column and first row of ``values`` outside ``[low, high)``."""
    bad = (values < low) | (values >= high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StoreError(f"{path}: column {column!r} row {i} is {values[i]}, outside {low}..{high - 1}")


def float32_column(column: pa.ChunkedArray) -> np.ndarray:
    """float32 numpy array of a nullable float column, null -> NaN."""
    return _writable(nan_filled(column))


def nan_filled(column: pa.ChunkedArray) -> np.ndarray:
    """A nullable float column as numpy, null -> NaN: possibly a read-only view of Arrow memory."""
    return pc.fill_null(column, pa.scalar(np.nan, pa.float32())).to_numpy()


def _writable(array: np.ndarray) -> np.ndarray:
    """``array``, copied if it is a read-only view of Arrow memory: callers own what they get."""
    return array if array.flags.writeable else array.copy()
