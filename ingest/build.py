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
from ingest.shards import split_tables
from ingest.store import Store, StoreError
from ingest.store_open import open_store
from ingest.store_write import check_replaceable, write_sharded_store, write_store
from ingest.table_read import read_table
from ingest.tokens import Vocabulary
from ingest.topk import cut_lists, infer_k, topk_arrays
from ingest.union import union_candidates
from ingest.values import is_integer

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
    shard_positions: int | None = None,
    append: bool = False,
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
    ``shard_positions``: write a sharded store (``ingest.store``), shards of whole requests of at
    most this many positions each (``ingest.shards``). ``append``: add the responses as new shards
    of the store ``out`` (same models; its k and vocabulary size unless given alike), their
    requests numbered after its own; one shard unless ``shard_positions`` cuts them.
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
    if shard_positions is not None and (not is_integer(shard_positions) or shard_positions < 1):
        raise IngestError(f"is {shard_positions!r}, not a positive integer", field="shard_positions")
    base = _append_base(out) if append else None
    check_replaceable(out)  # before reading anything; write_store checks again where it replaces
    manifest = read_manifest(requests)
    vocab = Vocabulary(base.vocab.get_column(store.VOCAB_TOKEN).to_list() if base else ())
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
    if base is not None:
        models, ks, vocab_size = _as_in_base(base, models, ks, vocab_size, k_given=k is not None or manifest.k is not None)
    tables = _tables(manifest, models, ks, vocab, first_request=None if base is None else _next_request(base))
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
    if base is None and shard_positions is None:
        return write_store(out, meta=meta, tables=tables)
    if base is not None:
        meta["n_requests"] += base.n_requests
        meta["quirks"] = {m: {q: n + base.quirks.get(m, {}).get(q, 0) for q, n in c.items()}
                          for m, c in meta["quirks"].items()}
    shards = split_tables(tables, shard_positions or max(tables[store.POSITIONS_FILE].num_rows, 1))
    return write_sharded_store(out, meta=meta, vocab=tables[store.VOCAB_FILE], shards=shards, base=base)


def _append_base(out: Path) -> Store:
    """The store ``--append`` grows; IngestError where ``out`` is not one."""
    try:
        return open_store(out)
    except StoreError as err:
        raise IngestError(f"cannot append to it: {err}", file=str(out)) from None


def _as_in_base(base: Store, models: list[ModelResponses], ks: dict[str, int], vocab_size: int | None, *,
                k_given: bool) -> tuple[list[ModelResponses], dict[str, int], int | None]:
    """The responses of an append in ``base``'s model order, with its list lengths (longer lists
    found are cut to them, unless a k was given) and vocabulary size; IngestError where they
    cannot be its shards (other models, shorter lists, another given k or vocabulary size)."""
    names = {m.name: m for m in models}
    if set(names) != set(base.models):
        raise IngestError(f"cannot append models {', '.join(sorted(names))}: the store holds "
                          f"{', '.join(base.models)}", file=str(base.path))
    for name in base.models:
        if ks[name] < base.k[name] or (k_given and ks[name] != base.k[name]):
            raise IngestError(f"cannot append k = {ks[name]} for model {name!r}: the store has k = {base.k[name]}",
                              file=str(base.path))
    if vocab_size is not None and vocab_size != base.vocab_size:
        raise IngestError(f"cannot append with vocabulary size {vocab_size}: the store records {base.vocab_size}",
                          file=str(base.path))
    return [names[name] for name in base.models], dict(base.k), base.vocab_size


def _next_request(base: Store) -> int:
    """The number an append gives its first request: one past the store's last."""
    for shard in reversed(base.shards):
        request = read_table(shard.folder / store.POSITIONS_FILE, [store.REQUEST])[store.REQUEST]
        if len(request):
            return int(request[-1].as_py()) + 1
    return 0


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
    manifest: Manifest, models: list[ModelResponses], ks: dict[str, int], vocab: Vocabulary, *,
    first_request: int | None,
) -> dict[str, pa.Table]:
    """The store's tables; requests numbered as the manifest does, or from ``first_request`` on
    (the manifest's gaps kept)."""
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
        request=manifest.request_index[request_row] + (0 if first_request is None or not len(manifest)
                                                       else first_request - int(manifest.request_index[0])),
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
