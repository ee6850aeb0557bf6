"""The exact oracle: a store's blend figures over the full vocabulary, from the models themselves.

Where the models of a store are at hand (a testbed: ``bench/testbed``), every figure a top-k
estimator approximates can be computed exactly: each model's whole next-token distribution at
every position, blended over all V tokens. ``Oracle`` does that, streaming over positions, for
B weight vectors at once. It is a ``Blend`` (the interface tuning uses: ``mean_nll``,
``mean_nll_grad_hess``, ``tuning_count``), so ``engine.tuning.newton_search`` on an oracle finds
the exact optimum. It is the judge of the estimators (``python -m bench.estimators``); evaluation
never uses it.

How: the models run once over each request the figures need (torch, CPU), and the final hidden
state of every position is kept (n x width floats per model). A pass then computes, per chunk
of positions, each model's logits from those states with its output layer, their log-softmax,
and lays the chunk out as a ``CandidateMatrix`` whose runs are the whole vocabulary, the target
first: the engine's own kernels blend it (``blend_nll_sums``, ``blend_nll_grad_hess``).
Precision: the models run in float32 and the kernels sum float32 terms within a run; on the
committed testbed a position's NLL is within 5e-5 nats of a float64 log-sum-exp over the same
logits, and a mean NLL within 2e-5 nats (1 in 50,000 of a perplexity), below the store's own
float32 figures' error (tests/engine/test_oracle.py measures both).

The models must be GPT-2-style causal LMs whose logits are their output embedding applied to
the last hidden state, and must split every request's text into the store's tokens; anything
else is an ``OracleError``. Needs the ``local`` extra (torch, transformers), imported lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ingest.jsonl import read_json_lines

from .blend import Blend
from .candidates import CandidateMatrix
from .dataset import Dataset
from .positions import Grouping
from .report import EXACT

__all__ = ["OracleError", "Oracle"]
CHUNK_CELLS = 1 << 25
"""Positions x vocabulary entries per chunk of a pass (134 MB of float32 per model)."""
HEAD_TOLERANCE = 1e-3
"""Largest |output layer of the last hidden state - the model's own logits| accepted (float32)."""


class OracleError(ValueError):
    """The models cannot serve as the store's oracle (missing, another tokenizer, another
    architecture); one line naming the model or file."""


class Oracle(Blend):
    """Exact figures of blends of any number of stored models (in term order: big, tuned,
    untuned for the three roles), from their weights: a ``Blend`` whose candidate matrix is the
    whole vocabulary, built chunk by chunk, so every figure ``Blend`` offers (``evaluate``,
    ``nll``, ``mean_nll``, ``mean_nll_grad_hess``) is exact, and the tuners take it as they take
    a blend.

    Attributes:
        vocab_size: V, the models' output size.
    """

    def __init__(self, dataset: Dataset, models: Sequence[str], model_dirs: Mapping[str, str | Path], *,
                 requests: str | Path):
        """Load the models of ``models`` from ``model_dirs`` (store name -> directory) and line
        them up with the store through its request manifest ``requests`` (``params.prompt``).

        Raises:
            OracleError: a model is missing or not usable, or does not split a request into the
                store's tokens.
        """
        from ingest.serve.model import load_model

        super().__init__(dataset, tuple(dataset.require_model(m) for m in models), matrix=None)
        missing = [m for m in self.models if m not in model_dirs]
        if missing:
            raise OracleError(f"no model directory for {', '.join(missing)}")
        self._local = []
        for name in self.models:
            try:
                self._local.append(load_model(model_dirs[name], name))
            # A broken folder fails in many ways (safetensors' own error, JSON, torch, transformers);
            # each means the same to the user: this folder is not a usable model.
            except Exception as err:  # noqa: BLE001
                raise OracleError(f"{model_dirs[name]}: cannot be loaded as a Hugging Face causal LM ({err})") from None
        sizes = {len(m.token_strings) for m in self._local}
        if len(sizes) != 1:
            raise OracleError(f"the models' vocabularies differ in size ({sorted(sizes)}); a blend needs one")
        self.vocab_size = sizes.pop()
        self._prompts = _prompts(Path(requests))
        pos = dataset.store.positions
        self._request = pos.get_column("request").to_numpy()
        self._position = pos.get_column("position").to_numpy()
        self._target = np.full(dataset.n_positions, -1, dtype=np.int64)
        self._hidden: list[np.ndarray] = [np.empty((dataset.n_positions, 0), dtype=np.float32) for _ in self._local]
        self._ready = np.zeros(dataset.n_positions, dtype=bool)

    @property
    def estimator(self) -> str:
        return EXACT

    def topk(self, rows: Sequence[int] | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each model's top-``k`` list at store rows ``rows``, from its full distribution.

        Returns:
            ids int64 ``(M, len(rows), k)`` (M models, in term order) in the models' numbering
            and lp float32 of the same shape, by log-probability descending.
        """
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        ids = np.empty((len(self.models), rows.size, k), dtype=np.int64)
        lp = np.empty((len(self.models), rows.size, k), dtype=np.float32)
        done = 0
        for chunk, full in self.distributions(rows):
            values, top = torch.topk(torch.from_numpy(full), k, dim=-1)
            ids[:, done : done + chunk.size], lp[:, done : done + chunk.size] = top.numpy(), values.numpy()
            done += chunk.size
        return ids, lp

    def distributions(self, rows: Sequence[int] | np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each model's whole next-token distribution at store rows ``rows``, chunk by chunk:
        ``(chunk, lp)`` with int64 ``chunk`` the chunk's rows (in the order given) and float32
        ``lp`` ``(M, len(chunk), V)`` natural-log values, in the models' numbering."""
        for chunk in self._row_chunks(np.asarray(rows, dtype=np.int64)):
            yield chunk, self._log_softmax(chunk)

    def target_ids(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """int64 ``(len(rows),)``: the actual tokens at store rows ``rows``, in the models' numbering."""
        rows = np.asarray(rows, dtype=np.int64)
        self._prepare(rows)
        return self._target[rows]

    # -- the passes ------------------------------------------------------------------------------

    def _row_chunks(self, rows: np.ndarray):
        per = max(1, CHUNK_CELLS // self.vocab_size)
        self._prepare(rows)
        for start in range(0, rows.size, per):
            yield rows[start : start + per]

    def _chunks(self, grouping: Grouping) -> Iterator[tuple[np.ndarray, CandidateMatrix, np.ndarray]]:
        """``(rows, CandidateMatrix, cells)`` per chunk of the store rows ``grouping`` counts: each
        run is the whole vocabulary, the target first (it swaps places with token 0)."""
        group = self.dataset.groups(grouping)
        for chunk, lp in self.distributions(np.flatnonzero(group >= 0)):  # lp: (M, P, V)
            target = self._target[chunk]
            at = np.arange(chunk.size)
            first = lp[:, :, 0].copy()
            lp[:, at, 0] = lp[:, at, target]
            lp[:, at, target] = first
            n_models, p, v = lp.shape
            yield chunk, CandidateMatrix.with_target_inside(
                np.arange(0, p * v + 1, v, dtype=np.uint64), lp.reshape(n_models, p * v), n_models=n_models,
                estimator=EXACT), group[chunk]

    def _log_softmax(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``(M, len(rows), V)``: each model's natural-log next-token distribution."""
        import torch

        out = np.empty((len(self._local), rows.size, self.vocab_size), dtype=np.float32)
        with torch.no_grad():
            for m, (local, hidden) in enumerate(zip(self._local, self._hidden, strict=True)):
                logits = local.model.get_output_embeddings()(torch.from_numpy(hidden[rows]))
                out[m] = torch.log_softmax(logits.float(), dim=-1).numpy()
        return out

    def _prepare(self, rows: np.ndarray) -> None:
        """Run the models over every request that holds a row not yet prepared, keeping each
        position's last hidden state and its target's id."""
        import torch

        todo = np.unique(self._request[rows[~self._ready[rows]]])
        for request in todo.tolist():
            here = np.flatnonzero(self._request == request)
            ids = self._request_ids(request, here)
            with torch.no_grad():
                for m, local in enumerate(self._local):
                    # The base model: the last hidden state without the 50,257-way output layer.
                    hidden = local.model.base_model(torch.tensor([ids])).last_hidden_state[0]
                    if self._hidden[m].shape[1] == 0:  # the model's first request: check the head once
                        head = local.model.get_output_embeddings()(hidden)
                        if float((head - local.model(torch.tensor([ids])).logits[0]).abs().max()) > HEAD_TOLERANCE:
                            raise OracleError(f"{local.name}: its logits are not its output embedding of the last "
                                              "hidden state (not a GPT-2-style model)")
                        self._hidden[m] = np.zeros((self.dataset.n_positions, hidden.shape[1]), dtype=np.float32)
                    self._hidden[m][here] = hidden[self._position[here] - 1].float().numpy()
            self._target[here] = np.asarray(ids)[self._position[here]]
            self._ready[here] = True

    def _request_ids(self, request: int, rows: np.ndarray) -> list[int]:
        """The model token ids of a request, checked against the store's tokens at ``rows``."""
        prompt = self._prompts.get(request)
        if prompt is None:
            raise OracleError(f"request {request} has no params.prompt in the manifest")
        local = self._local[0]
        ids = local.tokenizer.encode(prompt, add_special_tokens=False)
        vocab = self.dataset.store.vocab.get_column("token")
        stored = vocab.gather(self.dataset.store.positions.get_column("target").gather(rows)).to_list()
        positions = self._position[rows]
        if len(ids) != int(positions.max()) + 1:
            raise OracleError(f"{local.name} splits request {request} into {len(ids)} tokens, the store has "
                              f"{int(positions.max()) + 1}: another tokenizer?")
        mine = [local.token_strings[ids[p]] for p in positions]
        if mine != stored:
            at = next(i for i, (a, b) in enumerate(zip(mine, stored, strict=True)) if a != b)
            raise OracleError(f"{local.name} splits request {request} otherwise than the store (position "
                              f"{int(positions[at])}: {mine[at]!r}, the store has {stored[at]!r}): another tokenizer?")
        return ids


def _prompts(path: Path) -> dict[int, str]:
    """``request_index -> params.prompt`` of a request manifest."""
    out: dict[int, str] = {}
    for _, record in read_json_lines(path):
        if isinstance(record, dict) and isinstance(record.get("params"), dict):
            prompt: Any = record["params"].get("prompt")
            if isinstance(prompt, str):
                out[int(record["request_index"])] = prompt
    return out

