"""``collect``: every role's requests (and an optional calibration sample), all roles at once,
into ``<out>/raw/<role>.jsonl`` (and ``<role>.calibration.jsonl``, ``<role>.calibration.jsonl.gz``
for whole distributions; ``<out>/deep/`` for the npz)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingest.collect.batch import run_batch
from ingest.collect.config import RoleConfig
from ingest.collect.deep import write_deep
from ingest.collect.jobs import (
    Job,
    ManifestRequest,
    calibration_jobs,
    calibration_positions,
    role_jobs,
    sampled_positions,
)
from ingest.collect.rawlog import RawLog, completed_ids, success_record
from ingest.collect.runner import RoleOutcome, run_role
from ingest.parse.batch_lines import sample_id

RAW_DIR = "raw"
DEEP_DIR = "deep"


@dataclass(frozen=True)
class DeepSamplePlan:
    """A deep sample to gather beside the main requests (``--calibration N --calibration-k K``):
    ``positions`` positions (``ingest.collect.jobs.calibration_positions``: stratified, seeded),
    top-``k`` lists each; or, with ``vocabulary`` (``--calibration-k all``), the whole next-token
    distribution (``k`` = its size V), stored as ``full`` rows (``ingest.collect.deep``)."""

    positions: int
    k: int
    seed: int = 0
    vocabulary: Sequence[str] | None = None
    """(V,) the manifest tokenizer's token strings in id order, for whole distributions."""

    @classmethod
    def whole(cls, positions: int, vocabulary: Sequence[str], seed: int = 0) -> DeepSamplePlan:
        """Whole distributions over ``vocabulary`` at ``positions`` positions."""
        return cls(positions, len(vocabulary), seed, vocabulary)

    @property
    def full(self) -> bool:
        return self.vocabulary is not None

    def for_role(self, role: RoleConfig) -> DeepSamplePlan:
        """What ``role`` is asked: whole distributions, but top-``role.calibration_k`` lists where
        its config caps them (an API beside local models: ``calibration_k`` in models.toml)."""
        if self.full and role.calibration_k is not None:
            return DeepSamplePlan(self.positions, role.calibration_k, self.seed)
        return self


def raw_path(out: Path, role: str, calibration: DeepSamplePlan | None = None) -> Path:
    """``raw/<role>.jsonl``, or the calibration sample's raw log (gzip for whole distributions)."""
    if calibration is None:
        return out / RAW_DIR / f"{role}.jsonl"
    return out / RAW_DIR / f"{role}.calibration.jsonl{'.gz' if calibration.full else ''}"


def plan(roles: Sequence[RoleConfig], requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None) -> dict[str, Any]:
    """What a run would send (``--dry-run``): per role, requests and tokens in all and pending."""
    summary: dict[str, Any] = {}
    for role in roles:
        entry: dict[str, Any] = {"model": role.model, "mode": role.mode}
        for name, jobs, path in _job_sets(role, requests, out, calibration):
            done = completed_ids(path)
            todo = [j for j in jobs if j.custom_id not in done]
            tokens = sum(j.prompt_tokens for j in todo)
            entry[name] = {"requests": len(jobs), "pending": len(todo), "tokens": sum(j.prompt_tokens for j in jobs), "pending_tokens": tokens}
            if role.price_per_mtok is not None:
                price = role.price_per_mtok * (0.5 if role.mode == "batch" else 1.0)
                entry[name]["estimated_cost_usd"] = round(tokens * price / 1e6, 6)
        summary[role.role] = entry
    return summary


def _job_sets(
    role: RoleConfig, requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None
) -> list[tuple[str, list[Job], Path]]:
    sets = [("main", role_jobs(role, requests), raw_path(out, role.role))]
    if calibration is not None and calibration.positions > 0:
        mine = calibration.for_role(role)
        jobs = calibration_jobs(role, requests, n=mine.positions, k=mine.k, seed=mine.seed, full=mine.full)
        sets.append(("calibration", jobs, raw_path(out, role.role, mine)))
    return sets


def collect(
    roles: Sequence[RoleConfig], requests: Sequence[ManifestRequest], out: Path, *, calibration: DeepSamplePlan | None = None
) -> dict[str, Any]:
    """Run every role concurrently; returns the per-role outcome (JSON-ready). A role whose key
    variable is unset is reported and skipped; the others still run."""
    return asyncio.run(_collect(roles, requests, out, calibration))


async def _collect(
    roles: Sequence[RoleConfig], requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    tasks = {}
    for role in roles:
        if role.api_key_env is not None and not os.environ.get(role.api_key_env):
            results[role.role] = {"model": role.model, "error": f"environment variable {role.api_key_env} (api_key_env) is not set"}
            continue
        key = os.environ.get(role.api_key_env) if role.api_key_env else None
        tasks[role.role] = asyncio.create_task(_collect_role(role, requests, out, calibration, key))
    await _all_or_none(list(tasks.values()))
    results.update({name: task.result() for name, task in tasks.items()})
    calibrated = {
        role.role: raw_path(out, role.role, calibration.for_role(role))
        for role in roles
        if role.role in tasks and results[role.role].get("calibration", {}).get("complete")
    }
    if calibrated:
        sample = {(r.index, p) for r, p in calibration_positions(requests, n=calibration.positions, seed=calibration.seed)}
        listed = {role.role for role in roles if calibration.for_role(role) is not calibration}
        written = write_deep(calibrated, requests, out / DEEP_DIR, sample=sample, vocabulary=calibration.vocabulary,
                             listed=listed)
        for role, path in zip(calibrated, written, strict=True):
            results[role]["calibration"]["npz"] = str(path)
    return results


async def _all_or_none(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for every task; where one raises (a raw log that cannot be written), cancel the others,
    wait for them to end, and raise its error: one error, nothing left running or unretrieved."""
    if not tasks:
        return
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = next((t for t in tasks if t in done and not t.cancelled() and t.exception() is not None), None)
    if failed is not None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise failed.exception()


async def _collect_role(
    role: RoleConfig, requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None, key: str | None
) -> dict[str, Any]:
    result: dict[str, Any] = {"model": role.model, "mode": role.mode}
    for name, jobs, path in _job_sets(role, requests, out, calibration):
        log = RawLog(path)
        try:
            if role.mode == "next_token" and name == "main" and role.positions_per_request:
                _record_samples(role, requests, log)
            if role.mode == "batch" and name == "main":
                outcome = await run_batch(role, jobs, log, api_key=key, poll_seconds=role.poll_seconds)
            else:
                outcome = await run_role(role, jobs, log, api_key=key, label=f"{role.role} {name}" if name != "main" else role.role)
        finally:
            log.close()
        result[name] = _outcome_json(outcome, path)
        if outcome.fatal:
            break
    return result


def _record_samples(role: RoleConfig, requests: Sequence[ManifestRequest], log: RawLog) -> None:
    """Write each request's sampled positions once, so that ingest knows which positions were
    asked and which were left unobserved on purpose."""
    for r in requests:
        if sample_id(r.index) not in log.completed:
            log.append(success_record(sample_id(r.index), {"positions": sampled_positions(role, r)}))


def _outcome_json(outcome: RoleOutcome, path: Path) -> dict[str, Any]:
    data = asdict(outcome)
    del data["role"], data["model"]
    data["raw"] = str(path)
    data["pending"] = outcome.total - outcome.already_done - outcome.completed
    data["complete"] = data["pending"] == 0
    return data
