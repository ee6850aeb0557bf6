"""``collect``: every role's requests (and an optional calibration sample), all roles at once,
into ``<out>/raw/<role>.jsonl`` (and ``<role>.calibration.jsonl``, ``<role>.calibration.jsonl.gz``
for whole distributions; ``<out>/deep/`` for the npz).

Each role first settles what its endpoint needs (``raw/<role>.endpoint.json``: echo's
``max_tokens`` and how next-token contexts are sent, probed once), then, with ``--verify N``,
cross-checks echo against next-token requests (``ingest.collect.verify``): a role that fails is
not collected, and stays refused on reruns until a verification passes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ingest.collect.batch import run_batch
from ingest.collect.config import RoleConfig
from ingest.collect.contexts import TOKEN_IDS, ContextPrompts
from ingest.collect.deep import write_deep
from ingest.collect.endpoint import endpoint_path, load_record
from ingest.collect.jobs import (
    Job,
    ManifestRequest,
    calibration_jobs,
    calibration_positions,
    chunk_job,
    role_jobs,
    wanted_positions,
)
from ingest.collect.probe import (
    ProbeFailed,
    probe_context_prompts,
    probe_echo_max_tokens,
)
from ingest.collect.rawlog import RawLog, completed_ids, success_record
from ingest.collect.runner import Reply, RoleOutcome, run_role
from ingest.collect.verify import (
    VERIFIABLE_MODES,
    VERIFY_TOLERANCE,
    planned,
    verify_role,
)
from ingest.errors import IngestError
from ingest.parse.batch_lines import sample_id
from ingest.prepare.tokenizer import local_token_ids, local_tokenizer

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


@dataclass(frozen=True)
class VerifyPlan:
    """``--verify N``: score ``positions`` positions by echo and by next-token requests
    (``ingest.collect.verify``) before a role's collection."""

    positions: int
    tolerance: float = VERIFY_TOLERANCE
    seed: int = 0


def plan(roles: Sequence[RoleConfig], requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None) -> dict[str, Any]:
    """What a run would send (``--dry-run``): per role, requests and tokens in all and pending
    (next-token contexts that a text prompt would drop are counted as sent)."""
    summary: dict[str, Any] = {}
    for role in roles:
        entry: dict[str, Any] = {"model": role.model, "mode": role.mode}
        for name, jobs, path, _ in _job_sets(role, requests, out, calibration, ContextPrompts()):
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
    role: RoleConfig, requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None,
    contexts: ContextPrompts,
) -> list[tuple[str, list[Job], Path, int | None]]:
    """``(name, jobs, raw path, next-token positions dropped)`` of the main requests and the
    calibration sample (dropped None: not next-token requests)."""
    jobs = role_jobs(role, requests, contexts)
    wanted = sum(len(wanted_positions(role, r)) for r in requests) if role.mode == "next_token" else None
    sets = [("main", jobs, raw_path(out, role.role), None if wanted is None else wanted - len(jobs))]
    if calibration is not None and calibration.positions > 0:
        mine = calibration.for_role(role)
        jobs = calibration_jobs(role, requests, n=mine.positions, k=mine.k, seed=mine.seed, full=mine.full, contexts=contexts)
        drawn = len(calibration_positions(requests, n=mine.positions, seed=mine.seed))
        sets.append(("calibration", jobs, raw_path(out, role.role, mine), drawn - len(jobs)))
    return sets


def collect(
    roles: Sequence[RoleConfig], requests: Sequence[ManifestRequest], out: Path, *, calibration: DeepSamplePlan | None = None,
    verify: VerifyPlan | None = None,
) -> dict[str, Any]:
    """Run every role concurrently; returns the per-role outcome (JSON-ready). A role whose key
    variable is unset, whose endpoint answers no probe, or that fails ``verify``, is reported
    and not collected; the others still run. Next-token contexts use the manifest's local
    tokenizer (the first request's ``tokenizer``; none where it names none, or ``server``)."""
    if verify is not None and verify.positions > 0 and not any(r.tokens for r in requests):
        raise IngestError("needs token strings in the manifest (prepare with a local tokenizer)", field="--verify")
    tokenizer = requests[0].tokenizer if requests else None
    return asyncio.run(_collect(roles, requests, out, calibration, verify, _context_prompts(tokenizer)))


def _context_prompts(tokenizer: str | None) -> ContextPrompts:
    """Next-token contexts as ids of ``tokenizer`` (until a probe says otherwise), re-tokenized
    by it where sent as text; unchecked text without one."""
    if tokenizer is None or tokenizer == "server":
        return ContextPrompts()
    return ContextPrompts(local_token_ids(tokenizer), local_tokenizer(tokenizer), tokenizer)


async def _collect(
    roles: Sequence[RoleConfig], requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None,
    verify: VerifyPlan | None, contexts: ContextPrompts,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    tasks = {}
    for role in roles:
        if role.api_key_env is not None and not os.environ.get(role.api_key_env):
            results[role.role] = {"model": role.model, "error": f"environment variable {role.api_key_env} (api_key_env) is not set"}
            continue
        key = os.environ.get(role.api_key_env) if role.api_key_env else None
        tasks[role.role] = asyncio.create_task(_collect_role(role, requests, out, calibration, verify, contexts, key))
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
    role: RoleConfig, requests: Sequence[ManifestRequest], out: Path, calibration: DeepSamplePlan | None,
    verify: VerifyPlan | None, contexts: ContextPrompts, key: str | None
) -> dict[str, Any]:
    result: dict[str, Any] = {"model": role.model, "mode": role.mode}
    checking = verify is not None and verify.positions > 0 and role.mode in VERIFIABLE_MODES
    try:
        role, answered = await _echo_max_tokens(role, requests, out, key, result)
        refused = None
        if not any(reply.fatal for reply in answered.values()):  # else the run records it and stops at once
            next_tokens = role.mode == "next_token" or calibration is not None or checking
            contexts = await _context_prompts_of(role, requests, out, contexts, key, result) if next_tokens else contexts
            if verify is not None and verify.positions > 0 and not checking:
                result["verify"] = {"skipped": f"{role.mode} mode has no echo request to compare with"}
                print(f"approxft collect: {role.role}: --verify skipped: {result['verify']['skipped']}", file=sys.stderr)
            refused = await _verified(role, requests, out, contexts, verify if checking else None, key, result)
    except ProbeFailed as err:
        result["error"] = f"stopped: {err}"
        return result
    if refused is not None:
        result["error"] = refused
        return result
    for name, jobs, path, dropped in _job_sets(role, requests, out, calibration, contexts):
        log = RawLog(path)
        try:
            if role.mode == "next_token" and name == "main":
                _record_samples(role, requests, jobs, log)
            if role.mode == "batch" and name == "main":
                outcome = await run_batch(role, jobs, log, api_key=key)
            else:
                outcome = await run_role(role, jobs, log, api_key=key, label=f"{role.role} {name}" if name != "main" else role.role,
                                         answered=answered if name == "main" else None)
        finally:
            log.close()
        result[name] = _outcome_json(outcome, path)
        if dropped is not None:
            result[name]["dropped_positions"] = dropped
            if dropped:
                print(f"approxft collect: {role.role} {name}: dropped {dropped} of {dropped + len(jobs)} positions: "
                      "their context, sent as text, re-tokenizes into other tokens (they stay unobserved)", file=sys.stderr)
        if outcome.fatal:
            break
    return result


async def _echo_max_tokens(role: RoleConfig, requests: Sequence[ManifestRequest], out: Path, key: str | None,
                           result: dict[str, Any]) -> tuple[RoleConfig, dict[str, Reply]]:
    """``role`` with its echo ``max_tokens`` (models.toml's, the endpoint record's, else probed
    and recorded), and the probe's reply to keep as its request's answer (by custom id)."""
    if role.mode != "echo" or role.max_tokens is not None or not requests:
        return role, {}
    path = endpoint_path(out / RAW_DIR, role.role)
    record = load_record(path, role)
    answered: dict[str, Reply] = {}
    if record.echo_max_tokens is None:
        done = completed_ids(raw_path(out, role.role))  # the probe asks a request the run still needs
        asked = next((r for r in requests if chunk_job(role, r).custom_id not in done), requests[0])
        probe = await probe_echo_max_tokens(role, asked, api_key=key)
        if probe.decided:
            record.echo_max_tokens, record.echo_probe = probe.max_tokens, probe.seen
            record.save(path)
        if probe.reply is not None:
            answered[probe.job.custom_id] = probe.reply
        max_tokens, seen = probe.max_tokens, probe.seen
    else:
        max_tokens, seen = record.echo_max_tokens, record.echo_probe
    result["echo_max_tokens"] = {"value": max_tokens, "probe": seen}
    return replace(role, max_tokens=max_tokens), answered


async def _context_prompts_of(role: RoleConfig, requests: Sequence[ManifestRequest], out: Path, contexts: ContextPrompts,
                              key: str | None, result: dict[str, Any]) -> ContextPrompts:
    """How ``role``'s next-token contexts are sent: as token ids where the endpoint record (else
    a probe, recorded) says the endpoint takes them, else as text."""
    record = None
    if contexts.token_id is not None:
        path = endpoint_path(out / RAW_DIR, role.role)
        record = load_record(path, role)
        if record.context_prompts is None:
            record.context_prompts, record.context_probe = await probe_context_prompts(role, requests, contexts, api_key=key)
            record.save(path)
        if record.context_prompts != TOKEN_IDS:
            contexts = contexts.as_text()
    result["context_prompts"] = {"sent_as": contexts.kind, "probe": record.context_probe if record else None}
    return contexts


async def _verified(role: RoleConfig, requests: Sequence[ManifestRequest], out: Path, contexts: ContextPrompts,
                    verify: VerifyPlan | None, key: str | None, result: dict[str, Any]) -> str | None:
    """Why ``role`` must not be collected (None: it may): it fails ``verify`` now, or failed it
    earlier and is not checked again. A check already passed with the same settings is not
    repeated."""
    path = endpoint_path(out / RAW_DIR, role.role)
    record = load_record(path, role)
    if verify is None:
        if record.verify is not None and not record.verify.get("passed"):
            return (f"this endpoint failed --verify earlier ({path}): {record.verify.get('failure')}; "
                    "rerun with --verify N to check it again")
        return None
    if planned(role, requests, n=verify.positions, seed=verify.seed, tolerance=verify.tolerance).passed_with(record.verify):
        result["verify"] = {**record.verify, "reused": True}  # type: ignore[dict-item]
        return None
    outcome = await verify_role(role, requests, contexts, n=verify.positions, seed=verify.seed,
                                tolerance=verify.tolerance, api_key=key)
    record.verify = outcome.json()
    record.save(path)
    result["verify"] = outcome.json()
    if outcome.passed:
        return None
    return f"--verify failed: {outcome.failure}; not collected (recorded in {path}; rerun with --verify N to check again)"


def _record_samples(role: RoleConfig, requests: Sequence[ManifestRequest], jobs: Sequence[Job], log: RawLog) -> None:
    """Write, once per request, which positions are asked where not all of its requestable ones
    are (sampled, or dropped contexts), so that ingest knows which were left unobserved on
    purpose."""
    asked: dict[int, list[int]] = {}
    for job in jobs:
        if job.at is not None:
            asked.setdefault(job.at[0], []).append(job.at[1])
    for r in requests:
        positions = asked.get(r.index, [])
        if sample_id(r.index) in log.completed or (not role.positions_per_request and len(positions) == len(wanted_positions(role, r))):
            continue
        log.append(success_record(sample_id(r.index), {"positions": positions}))


def _outcome_json(outcome: RoleOutcome, path: Path) -> dict[str, Any]:
    data = asdict(outcome)
    del data["role"], data["model"]
    data["raw"] = str(path)
    data["pending"] = outcome.total - outcome.already_done - outcome.completed
    data["complete"] = data["pending"] == 0
    return data
