"""``approxft collect`` when things die under it: a batch that fails, expires, is cancelled,
disappears, cannot be read or never ends (batch mode never polls forever); a raw log that cannot be
written (a full tmpfs: ENOSPC; a file size limit: EFBIG); a second run into the same folder. Each
is one error line and exit 1, with every line already written intact, and a rerun resumes. Real
HTTP on 127.0.0.1, the real openai client, the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from tests.helpers import REPO
from tests.http_fakes import FakeBatches, HttpServer, json_reply
from tests.ingest.collect.fake_server import config, echo_response, raw

ROLES = {"big": {}, "tuned": {}, "untuned": {}}


def echo_server(delay: float = 0.0) -> HttpServer:
    """Good echo answers, after ``delay`` seconds each."""

    def answer(request: Any) -> Any:
        body = request.json()
        time.sleep(delay)
        return json_reply(echo_response(body["model"], body["prompt"], generate=body.get("max_tokens", 0)))

    return HttpServer(answer)


def good_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"response": {"status_code": 200, "body": echo_response(body["model"], body["prompt"], generate=1)}, "error": None}


def collect_big(capsys, models: Path, manifest: Path) -> tuple[int, str]:
    """``collect --roles big``: exit status, stderr."""
    status = main(["collect", "--models", str(models), "--corpus", str(manifest), "--out", str(manifest.parent),
                   "--roles", "big"])
    return status, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    """The lines of ``err`` that are errors (not progress lines), tracebacks or asyncio's complaints."""
    return [line for line in err.splitlines() if "error:" in line or "Traceback" in line or "exception" in line.lower()]


def batch_config(tmp_path: Path, url: str, **settings: Any) -> Path:
    return config(tmp_path / "models.toml", url, {"big": {"mode": "batch"}, "tuned": {}, "untuned": {}},
                  poll_seconds=0.05, retries=0, **settings)


@pytest.mark.parametrize("end", ["failed", "expired", "cancelled"])
def test_a_batch_that_ends_badly_stops_the_role_keeps_its_answers_and_a_rerun_sends_the_rest(manifest, capsys, tmp_path, end):
    path, prompts = manifest
    n = len(prompts)
    course = {"end": end}
    batches = FakeBatches(good_line, lambda batch: "in_progress" if batch["polls"] < 2 else course["end"],
                          failure="the model `big` does not exist")
    with HttpServer(lambda request: batches.handle(request) or json_reply({}, 404)) as server:
        models = batch_config(tmp_path, server.url)
        status, err = collect_big(capsys, models, path)
        state = path.parent / "raw" / "big.batch.json"
        answered = 0 if end == "failed" else n // 2
        errors = error_lines(err)
        reason = " (line 1: the model `big` does not exist)" if end == "failed" else ""
        assert status == 1 and errors == [
            f"approxft collect: error: big main: stopped: batch batch_0 ended {end}{reason}: {answered} of {n} requests "
            f"answered and stored; a rerun sends the other {n - answered} in a new batch"], err
        assert not state.exists()
        lines = raw(path.parent, "big")
        assert sum(1 for line in lines if not line["error"]) == answered
        if end != "failed":
            assert {line["error"]["code"] for line in lines if line["error"]} == {"batch_error"}
            assert "completion window expired" in next(line for line in lines if line["error"])["error"]["message"]

        course["end"] = "completed"
        status, err = collect_big(capsys, models, path)
    assert status == 0, err
    assert batches.created == ["batch_0", "batch_1"] and len(batches.batches["batch_1"]["lines"]) == n - answered
    ok = [line["custom_id"] for line in raw(path.parent, "big") if not line["error"]]
    assert len(ok) == len(set(ok)) == n


@pytest.mark.parametrize("fault", ["gone", "unreadable", "never ends"])
def test_a_batch_that_cannot_be_followed_stops_the_role_keeps_its_id_and_a_rerun_resumes_it(manifest, capsys, tmp_path, fault):
    path, prompts = manifest
    broken = {"on": True}

    def course(batch: dict[str, Any]) -> Any:
        if not broken["on"]:
            return "completed"
        if fault == "gone" and batch["polls"] >= 1:
            return json_reply({"error": {"message": f"No such Batch object: {batch['id']}"}}, 404)
        if fault == "unreadable":
            return 502, "text/html", b"<html><body>Bad gateway</body></html>"
        return "in_progress"

    batches = FakeBatches(good_line, course)
    with HttpServer(lambda request: batches.handle(request) or json_reply({}, 404)) as server:
        models = batch_config(tmp_path, server.url, batch_timeout=1.5)
        state = path.parent / "raw" / "big.batch.json"
        expected = {
            "gone": f"batch batch_0 is not known at {server.url} (HTTP 404: No such Batch object: batch_0); its id stays "
                    f"in {state}: delete that file to send the pending requests in a new batch",
            "unreadable": f"batch batch_0: its status cannot be read (HTTP 502: <html><body>Bad gateway</body></html>); "
                          f"its id stays in {state}, so a rerun resumes it",
            "never ends": rf"batch batch_0 is still in_progress 0\.0\d h after it was created, past batch_timeout = 1\.5 s; "
                          rf"its id stays in {state}: a rerun resumes it \(raise batch_timeout in models\.toml to wait "
                          rf"longer\), or cancel it \(POST {server.url}/batches/batch_0/cancel\)",
        }[fault]
        for _ in range(2):  # the rerun while the fault lasts stops the same way, without a second batch
            status, err = collect_big(capsys, models, path)
            assert status == 1
            [line] = error_lines(err)
            prefix = "approxft collect: error: big main: stopped: "
            if fault == "never ends":
                assert line.startswith(prefix) and re.fullmatch(expected, line[len(prefix):]), line
            else:
                assert line == prefix + expected
            assert json.loads(state.read_text())["batch_id"] == "batch_0" and batches.created == ["batch_0"]
            assert not (path.parent / "raw" / "big.jsonl").read_text()

        broken["on"] = False
        if fault == "gone":
            state.unlink()  # what the message says to do
        status, err = collect_big(capsys, models, path)
    assert status == 0, err
    assert batches.created == (["batch_0", "batch_1"] if fault == "gone" else ["batch_0"])
    assert not state.exists() and len(raw(path.parent, "big")) == len(prompts)


def test_batch_timeout_must_be_a_finite_positive_number(manifest, capsys, tmp_path):
    path, _ = manifest
    for value, problem in (("0", "is 0, not positive"), ("inf", "must be a finite number of seconds")):
        models = config(tmp_path / "models.toml", "http://127.0.0.1:9/v1", {**ROLES, "big": {"mode": "batch"}})
        models.write_text(models.read_text().replace('mode = "batch"', f'mode = "batch"\nbatch_timeout = {value}'))
        assert main(["collect", "--models", str(models), "--corpus", str(path), "--out", str(path.parent)]) == 1
        assert capsys.readouterr().err == f"approxft collect: error: {models}: field 'models.big.batch_timeout' {problem}\n"


# A raw log that cannot be written.

def check_whole_lines(run: Path) -> dict[str, list[dict[str, Any]]]:
    """Every raw file: whole lines only (each parses, the file ends with a newline)."""
    found = {}
    for log in sorted((run / "raw").glob("*.jsonl")):
        data = log.read_bytes()
        assert not data or data.endswith(b"\n"), f"{log} ends with a torn line"
        found[log.stem] = [json.loads(line) for line in data.splitlines()]
    return found


def check_one_write_error(status: int, err: str, run: Path, problem: str) -> None:
    errors = error_lines(err)
    assert status == 1 and len(errors) == 1, err
    assert "Task exception" not in err and "Traceback" not in err
    line = errors[0]
    prefix = "approxft collect: error: "
    assert line.startswith(prefix + str(run / "raw")) and line.endswith(
        f": cannot append a response ({problem}); every record before it is intact: make room and rerun to resume"), line


def rerun_completes(capsys, models: Path, path: Path, n: int) -> None:
    status = main(["collect", "--models", str(models), "--corpus", str(path), "--out", str(path.parent)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "dropping a partial last line" not in err  # the failed write was cut back at once
    for role, lines in check_whole_lines(path.parent).items():
        ok = [line["custom_id"] for line in lines if not line["error"]]
        assert len(ok) == len(set(ok)) == n, role


@pytest.fixture()
def tmpfs(tmp_path):
    """A 16 KiB tmpfs (a disk that fills up), where this process may mount one (root)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}); the EFBIG test covers the same path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_with_one_line_and_whole_lines(manifest, capsys, tmp_path, tmpfs):
    """ENOSPC for real: the run folder on a 16 KiB tmpfs; answers of about 1.5 KB each fill it.
    (Echo's max_tokens is set, so that no endpoint record takes the room first: that case is the
    next test's.)"""
    path, prompts = manifest
    run = tmpfs / "run"
    run.mkdir()
    with echo_server() as server:
        models = config(tmp_path / "models.toml", server.url, ROLES, max_tokens=0)
        status = main(["collect", "--models", str(models), "--corpus", str(path), "--out", str(run)])
        check_one_write_error(status, capsys.readouterr().err, run, "No space left on device")
        before = check_whole_lines(run)
        assert 1 <= sum(len(lines) for lines in before.values()) < 3 * len(prompts)  # stopped part way
        subprocess.run(["mount", "-o", "remount,size=1m", str(tmpfs)], check=True)
        status = main(["collect", "--models", str(models), "--corpus", str(path), "--out", str(run)])
        err = capsys.readouterr().err
    assert status == 0, err
    assert "dropping a partial last line" not in err  # the failed write was cut back at once
    after = check_whole_lines(run)
    for role, lines in before.items():
        assert after[role][: len(lines)] == lines  # nothing written before the failure was lost
        ok = [line["custom_id"] for line in after[role] if not line["error"]]
        assert len(ok) == len(set(ok)) == len(prompts)


def test_a_full_disk_before_the_first_answer_names_the_file_it_could_not_write(manifest, capsys, tmp_path, tmpfs):
    """The probe's endpoint record is the first file a run writes (tmpfs pages are 4 KiB: four
    files fill 16 KiB); the one error line names it, and nothing half-written is left."""
    path, _ = manifest
    run = tmpfs / "run"
    (run / "raw").mkdir(parents=True)
    (tmpfs / "filler").write_bytes(b"x" * 12 * 1024)  # what is left holds the locks and one page
    with echo_server() as server:
        status = main(["collect", "--models", str(config(tmp_path / "models.toml", server.url, ROLES)),
                       "--corpus", str(path), "--out", str(run)])
    errors = error_lines(capsys.readouterr().err)
    assert status == 1 and len(errors) == 1, errors
    assert "No space left on device" in errors[0] and str(run / "raw") in errors[0], errors[0]
    assert not list((run / "raw").glob(".*.tmp")) and not list((run / "raw").glob("*.endpoint.json"))


def test_a_file_size_limit_ends_the_run_with_one_line_and_whole_lines(manifest, capsys, tmp_path):
    """EFBIG for real, anywhere: the run in a subprocess under RLIMIT_FSIZE (SIGXFSZ ignored), so
    the write that crosses the limit is cut short by the kernel, then refused."""
    path, prompts = manifest
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))\n"
              "from engine.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    with echo_server() as server:
        models = config(tmp_path / "models.toml", server.url, ROLES)
        done = subprocess.run([sys.executable, "-c", script, "collect", "--models", str(models), "--corpus", str(path),
                               "--out", str(path.parent)], capture_output=True, text=True, cwd=REPO, timeout=300)
        check_one_write_error(done.returncode, done.stderr, path.parent, "File too large")
        assert done.stdout == ""
        before = check_whole_lines(path.parent)
        assert 1 <= sum(len(lines) for lines in before.values()) < 3 * len(prompts)  # stopped part way
        rerun_completes(capsys, models, path, len(prompts))
    after = check_whole_lines(path.parent)
    for role, lines in before.items():
        assert after[role][: len(lines)] == lines


def test_a_second_run_into_the_same_folder_is_refused_at_once(manifest, capsys, tmp_path):
    path, prompts = manifest
    with echo_server(delay=0.25) as server:
        models = config(tmp_path / "models.toml", server.url, ROLES, concurrency=1)
        args = ["collect", "--models", str(models), "--corpus", str(path), "--out", str(path.parent)]
        first = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            lock = path.parent / ".collect.lock"
            deadline = time.monotonic() + 60
            while not (lock.exists() and lock.read_text() == str(first.pid)) or not server.requests:
                assert time.monotonic() < deadline and first.poll() is None, "the first run did not start"
                time.sleep(0.05)
            calls = len(server.requests)
            status = main(args)
            second = capsys.readouterr()
            out, err = first.communicate(timeout=120)
        finally:
            first.kill()
    assert status == 1 and second.out == ""
    assert second.err == (f"approxft collect: error: {path.parent}: another approxft collect is running in this folder "
                          f"(pid {first.pid}); wait for it to end, or stop it\n")
    assert first.returncode == 0, err
    assert len(server.requests) == 3 * len(prompts) and calls < 3 * len(prompts)  # the second sent nothing
    for role, lines in check_whole_lines(path.parent).items():
        assert len(lines) == len({line["custom_id"] for line in lines}) == len(prompts), role
