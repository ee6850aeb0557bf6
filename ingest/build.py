"""Ingest: response files of several models + the request manifest -> a columnar store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ingest import store
from ingest.align import check_aligned
from ingest.errors import IngestError
from ingest.manifest import Manifest, read_manifest
from ingest.parse.model_file import ModelResponses, read_model_responses
from ingest.quirks import QUIRKS
from ingest.store_write import check_replaceable, write_store
from ingest.tokens import Vocabulary
from ingest.topk import cut_lists, infer_k, topk_arrays
from ingest.union import union_candidates

_MAX_K = int(np.iinfo(np.int16).max)


def ingest_responses(
    paths: Sequence[str | Path],
    *,
    requests: str | Path,
    out: str | Path,
    k: int | None = None,
    vocab_size: int | None = None,
    format: str | None = None,  # noqa: A002
    token_strings: Sequence[str] | None = None,
) -> Path:
    """Read one echo-scored responses file per model and write the store at ``out``.

    ``paths``: JSONL files (plain or gzip), line i answering line i of ``requests`` (the
    manifest; where it has the prompt text or tokens, lines are checked against them and matched
    by content, see ``ingest.parse.model_file``). A model is named by its responses' ``model``
    field, else by the file name. What reading tolerated is counted per model in ``store.json``
    (``quirks``; ``ingest.quirks``), and ``open_store(out).quirks`` gives it.
    ``k``: top-k width kept per model; default the manifest's ``params.logprobs``, else the most
    common list size in each file. ``vocab_size``: the tokenizer's vocabulary size, recorded for
    estimators that model how the unlisted mass spreads (unknown if None). The store is written atomically (see ``store_write.write_store``);
    an existing ``out`` must be a store and is replaced only on success. Returns ``out``.
    ``format``: the response format (``ingest.parse.formats.FORMATS``), detected per line when None;
    Batch-API-shaped files (``approxft collect`` raw files) are matched by ``custom_id``.
    ``token_strings``: the API string of every token id, naming tokens of id-keyed formats (vLLM).
    Raises IngestError naming file, line and field.
    """
    files = [Path(p) for p in paths]
    out = Path(out)
    if not files:
        raise IngestError("no response files given")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise IngestError(f"is {k!r}, not a positive integer", field="k")
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise IngestError(f"is {vocab_size!r}, not a positive integer", field="vocab_size")
    check_replaceable(out)  # before reading anything; write_store checks again where it replaces
    manifest = read_manifest(requests)
    vocab = Vocabulary()
    models = [
        read_model_responses(path, manifest, format=format, id_names=token_strings).with_vocabulary(vocab)
        for path in files
    ]
    _check_names(models)
    check_aligned(models, manifest.request_index)
    ks = {m.name: k or manifest.k or infer_k(m) for m in models}
    for name, width in ks.items():
        if width > _MAX_K:
            raise IngestError(f"is {width} for model {name!r}: ranks are int16, so at most {_MAX_K}", field="k")
    tables = _tables(manifest, models, ks, vocab)
    meta = {
        "format": store.STORE_FORMAT,
        "version": store.STORE_VERSION,
        "models": [m.name for m in models],
        "k": ks,
        "n_positions": tables[store.POSITIONS_FILE].num_rows,
        "n_requests": len(manifest),
        "sources": {m.name: str(m.source) for m in models},
        "vocab_size": vocab_size,
        "quirks": {m.name: dict.fromkeys(QUIRKS, 0) | m.quirks | cut_lists(m, ks[m.name]) for m in models},
    }
    return write_store(out, meta=meta, tables=tables)


def _check_names(models: list[ModelResponses]) -> None:
    seen: dict[str, ModelResponses] = {}
    for model in models:
        if model.name in seen:
            raise IngestError(
                f"names model {model.name!r}, as does {seen[model.name].source}: one file per model",
                file=str(model.source),
            )
        seen[model.name] = model


def _tables(
    manifest: Manifest, models: list[ModelResponses], ks: dict[str, int], vocab: Vocabulary
) -> dict[str, pa.Table]:
    first = models[0]
    n_tokens = np.diff(first.token_starts)
    n_scored = np.maximum(n_tokens - 1, 0)
    request_row = np.repeat(np.arange(len(manifest)), n_scored)
    # Every token but each request's first is scored.
    scored = np.ones(first.token_ids.size, dtype=bool)
    scored[first.token_starts[:-1][n_tokens > 0]] = False
    scored_index = np.flatnonzero(scored)
    return store_tables(
        names=[m.name for m in models],
        request=manifest.request_index[request_row],
        position=(scored_index - first.token_starts[request_row]).astype(np.int32),
        split=pa.array(manifest.split, pa.string()).take(request_row),
        document=pa.array(manifest.document, pa.string()).take(request_row),
        target=first.token_ids[scored_index],
        target_lp=np.stack([m.target_lp for m in models]),
        topk=[topk_arrays(m, ks[m.name]) for m in models],
        vocab=vocab.table(),
    )


def store_tables(
    *,
    names: Sequence[str],
    request: np.ndarray,
    position: np.ndarray,
    split: pa.Array,
    document: pa.Array,
    target: np.ndarray,
    target_lp: np.ndarray,
    topk: Sequence[tuple[np.ndarray, np.ndarray]],
    vocab: pa.Table,
) -> dict[str, pa.Table]:
    """Every table of a store from per-position arrays (n scored positions, M models).

    request int32 (n,); position int32 (n,) tokens of context; split, document: string arrays
    (n,); target int32 (n,) vocabulary ids; target_lp float32 (M, n), NaN = not observed;
    topk[m] = (ids int32 (n, k_m), lp float32 (n, k_m)) by rank, -1 / NaN in empty slots;
    vocab: the vocab table (``VOCAB_SCHEMA``).
    """
    union = union_candidates(target, target_lp, [t[0] for t in topk], [t[1] for t in topk], n_vocab=vocab.num_rows)
    positions = pa.table(
        [
            pa.array(request, pa.int32()),
            pa.array(position, pa.int32()),
            split,
            document,
            pa.array(target, pa.int32()),
            pa.array(np.diff(union.offsets).astype(np.int32)),
        ]
        + [_nullable(lp) for lp in target_lp],
        schema=store.positions_schema(names),
    )
    candidates = pa.table(
        [pa.array(union.token)] + [_nullable(lp) for lp in union.lp] + [pa.array(r) for r in union.rank],
        schema=store.candidates_schema(names),
    )
    tables = {store.POSITIONS_FILE: positions, store.CANDIDATES_FILE: candidates, store.VOCAB_FILE: vocab}
    for name, (ids, lp) in zip(names, topk, strict=True):
        k = ids.shape[1]
        tables[store.topk_file(name)] = pa.table(
            [pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), k),
             pa.FixedSizeListArray.from_arrays(pa.array(lp.ravel()), k)],
            schema=store.topk_schema(k),
        )
    return tables


def _nullable(lp: np.ndarray) -> pa.Array:
    """float32 Arrow array with null where ``lp`` is NaN (value unknown)."""
    return pa.array(lp, type=pa.float32(), mask=np.isnan(lp))
