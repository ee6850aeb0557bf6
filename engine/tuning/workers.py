"""Several searches sharing one study (processes on one machine or several, or threads), so that
it ends with exactly the number of complete trials asked for, and a search that died does not
block the others or a resume.

- Before asking, a search counts the complete trials and those held by live searches (running
  or waiting), asks for at most what is still missing, and waits while others hold all of it.
- After asking, trials rank by number (the storage numbers them in the order they are made): a
  trial with ``target`` or more complete, running or waiting trials before it is surplus, and is
  given back at once, told FAIL with the user attribute ``SURPLUS_ATTR`` saying why (TPE ignores
  failed trials; a pruned one would count against its parameters). Trials ahead of it that fail
  later leave the count short, so the search asks again: the study never ends above ``target``.
- Each trial is made with its owner recorded (``OWNER_ATTR``: host, boot, process id and start,
  search). A running trial is stale, and told FAIL with ``STALE_ATTR`` saying why, when its
  owner is a process of this machine that has ended (or a search of this process that has
  returned), when its owner is on another machine and it started ``STALE_AFTER`` seconds ago, or
  when it has no owner (made by other code) and started ``UNOWNED_AFTER`` seconds ago.

Optuna has no public way to make a running trial with attributes in one step, to set an
attribute of a trial one did not ask, or to have its samplers see a trial not made by ``ask``:
hence its internals ``study._storage``, ``study._study_id``, ``_trial_id`` and
``study._thread_local.cached_all_trials``. pyproject.toml bounds optuna below its next major
version, and tests/engine/tuning/test_optuna_internals.py says what changed if a release drops one.
"""

from __future__ import annotations

import bisect
import math
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from functools import cache
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

__all__ = ["OWNER_ATTR", "SURPLUS_ATTR", "STALE_ATTR", "STALE_AFTER", "UNOWNED_AFTER", "SharedSearch"]

OWNER_ATTR = "approxft_owner"
SURPLUS_ATTR = "approxft_surplus"
STALE_ATTR = "approxft_stale"
STALE_AFTER = 3600.0
"""Seconds after which another machine's running trial counts as abandoned: a trial runs for one
kernel pass over the tuning split (well under a minute on a million positions)."""
UNOWNED_AFTER = 600.0
"""Seconds after which a running trial without an owner (made by code other than approxft's
search, e.g. an older version) counts as abandoned."""
POLL_SECONDS = 0.1
"""How often a search waiting for others' trials looks at the study again."""

_HELD = (TrialState.RUNNING, TrialState.WAITING)
_live_searches: set[str] = set()
_live_lock = threading.Lock()


class SharedSearch:
    """One search's part in a study that others may share: ``ask`` the missing trials, ``tell``
    their results; a context manager (the search is live inside it)."""

    def __init__(self, study: optuna.Study, target: int):
        self.study, self.target = study, target
        self.owner = {**_this_process(), "search": uuid.uuid4().hex}

    def __enter__(self) -> SharedSearch:
        with _live_lock:
            _live_searches.add(self.owner["search"])
        return self

    def __exit__(self, *exc: object) -> None:
        with _live_lock:
            _live_searches.discard(self.owner["search"])

    def complete(self) -> int:
        """Complete trials in the study."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def ask(self, distributions: dict[str, FloatDistribution], batch: int) -> list[optuna.Trial]:
        """Up to ``batch`` new trials, each within what the study still misses of ``target``
        complete trials; empty once the study has them. Waits while live searches hold all that
        is missing."""
        while True:
            trials = self.study.get_trials(deepcopy=False)
            stale = self._fail_stale(trials)
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            if complete >= self.target:
                return []
            held = sum(t.state in _HELD and t.number not in stale for t in trials)
            room = self.target - complete - held
            if room <= 0:
                time.sleep(POLL_SECONDS)
                continue
            asked = [self._new_trial(distributions) for _ in range(min(batch, room))]
            kept = self._give_back_surplus(asked)
            if kept:
                return kept

    def _new_trial(self, distributions: dict[str, FloatDistribution]) -> optuna.Trial:
        """``study.ask(distributions)``, but the trial is made with its owner in one storage
        operation (Optuna's ask has no way to pass attributes, hence its storage and study id):
        a search killed at any point leaves no running trial without an owner."""
        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={OWNER_ATTR: self.owner})
        trial_id = self.study._storage.create_new_trial(self.study._study_id, template_trial=template)
        self.study._thread_local.cached_all_trials = None  # as ask does: the sampler sees this trial
        trial = optuna.Trial(self.study, trial_id)
        for name, dist in distributions.items():
            trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        return trial

    def tell(self, trial: optuna.Trial, value: float | None) -> None:
        """Tell ``value`` (None: FAIL). A trial another search has meanwhile failed as stale (its
        owner looked dead to it) stays failed."""
        try:
            if value is None:
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            else:
                self.study.tell(trial, value, skip_if_finished=True)
        except UpdateFinishedTrialError:
            pass

    def _give_back_surplus(self, asked: list[optuna.Trial]) -> list[optuna.Trial]:
        counted = sorted(t.number for t in self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, *_HELD)))
        kept = []
        for trial in asked:
            ahead = bisect.bisect_left(counted, trial.number)
            if ahead < self.target:
                kept.append(trial)
            else:
                why = f"{ahead} trials were complete or running before it; {self.target} were asked for"
                self._fail(trial._trial_id, trial.number, SURPLUS_ATTR, why)
        return kept

    def _fail_stale(self, trials: list[FrozenTrial]) -> set[int]:
        """Fail the running trials whose owners are gone; returns their numbers."""
        now = datetime.now()
        failed = set()
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                why = _abandoned(trial, now)
                if why is not None:
                    self._fail(trial._trial_id, trial.number, STALE_ATTR, why)
                    failed.add(trial.number)
        return failed

    def _fail(self, trial_id: int, number: int, attr: str, why: str) -> None:
        """Tell a trial FAIL, saying why in ``attr``; it may be another search's (Optuna has no
        public way to set an attribute of a trial one did not ask: hence the storage)."""
        try:
            self.study._storage.set_trial_user_attr(trial_id, attr, why)
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            pass  # another search finished it first


def _abandoned(trial: FrozenTrial, now: datetime) -> str | None:
    """Why a running trial's owner is gone, None while it may be alive."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    age = (now - trial.datetime_start).total_seconds() if trial.datetime_start else math.inf
    if not isinstance(owner, dict):
        return f"no owner recorded {age:.0f} s after it started" if age > UNOWNED_AFTER else None
    me = _this_process()
    if (owner.get("host"), owner.get("boot")) != (me["host"], me["boot"]):
        return f"running on {owner.get('host')} for {age:.0f} s" if age > STALE_AFTER else None
    if owner.get("pid") == me["pid"] and owner.get("start") == me["start"]:
        with _live_lock:
            live = owner.get("search") in _live_searches
        return None if live else f"its search in process {me['pid']} has returned"
    return None if _running(owner.get("pid"), owner.get("start")) else \
        f"its process {owner.get('pid')} on {owner.get('host')} has ended"


@cache
def _this_process() -> dict[str, Any]:
    """What identifies this process among all: host, boot (a reboot reuses process ids), process
    id and its start time (a later process may reuse the id)."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process's start, in clock ticks since boot (Linux ``/proc/PID/stat`` field 22); None
    where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _running(pid: Any, start: Any) -> bool:
    """Whether process ``pid`` of this machine is running and is the one that started at ``start``."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    now_start = _start_time(pid)
    if now_start is not None:
        return start is None or now_start == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
