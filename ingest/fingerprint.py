"""A store's fingerprint: a SHA-256 of what its tables hold and of what ``store.json`` says about
them (models, k, requests, vocabulary size), not of how the Parquet files happen to be encoded,
so the same data ingested again (by another pyarrow, say) has the same fingerprint.

A sharded store's covers its vocabulary table and its shards' fingerprints, each its shard's
tables', so appending a shard hashes only what is new. Ingest records it in ``store.json``;
``Store.fingerprint`` computes it from the tables for a store written before that. A re-ingest keeps the calibration fits only where it is unchanged
(``store.write_store``), and a study records it (``engine.tuning.tpe``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PREFIX = "sha256:"
META_KEYS = ("models", "k", "n_requests", "vocab_size")
"""What ``store.json`` says that the fingerprint covers; ``sources`` (file paths) is left out."""


def store_fingerprint(meta: Mapping[str, Any], names: Iterable[str], table: Callable[[str], pa.Table], *,
                      shards: Sequence[str] = ()) -> str:
    """``sha256:<hex>`` of ``meta``'s ``META_KEYS``, of ``shards`` (a sharded store's shards'
    fingerprints, in order; each shard's is this function's over its own tables) and of each
    table (``table(name)``, taken in name order, one at a time): its name, schema and every
    column's values and nulls."""
    digest = hashlib.sha256()
    keys = {key: meta.get(key) for key in META_KEYS} | ({"shards": list(shards)} if shards else {})
    digest.update(json.dumps(keys, sort_keys=True).encode())
    for name in sorted(names):
        data = table(name)
        digest.update(f"\0{name}\0".encode())
        for field, column in zip(data.schema, data.columns, strict=True):
            digest.update(f"{field.name}:{_type_name(field.type)}:{field.nullable}\0".encode())
            _update(digest, column.combine_chunks() if column.num_chunks != 1 else column.chunk(0))
    return PREFIX + digest.hexdigest()


def _type_name(kind: pa.DataType) -> str:
    """The type as the data see it: a list's child field name (``item`` in memory, ``element``
    read back from Parquet) and dictionary encoding left out."""
    if pa.types.is_fixed_size_list(kind):
        return f"fixed_size_list<{_type_name(kind.value_type)}>[{kind.list_size}]"
    if pa.types.is_dictionary(kind):
        return _type_name(kind.value_type)
    return str(kind)


def _update(digest: "hashlib._Hash", array: pa.Array) -> None:
    """Feed one array's content to ``digest``: length, null positions, then the values (nulls as
    0, string and binary values as their lengths and bytes), whatever its chunking or offset."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    digest.update(struct.pack("<qq", len(array), array.null_count))
    if len(array) == 0:
        return
    if array.null_count:
        digest.update(np.packbits(array.is_null().to_numpy(zero_copy_only=False)).tobytes())
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        _update(digest, array.flatten())
    elif pa.types.is_binary(kind) or pa.types.is_string(kind) or pa.types.is_large_binary(kind) \
            or pa.types.is_large_string(kind):
        wide = pa.types.is_large_binary(kind) or pa.types.is_large_string(kind)
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64 if wide else np.int32)
        offsets = offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)
        digest.update(np.ascontiguousarray(offsets - offsets[0]).tobytes())
        data = array.buffers()[2]
        if data is not None:
            digest.update(memoryview(data)[offsets[0] : offsets[-1]])
    else:
        values = pc.fill_null(array, pa.scalar(0, kind)) if array.null_count else array
        digest.update(np.ascontiguousarray(values.to_numpy(zero_copy_only=False)).data)
