"""Background jobs (fingerprint_core.jobs): real `manifpt train` processes on a toy workspace, followed through
their record to the end; refused second starts; killed and failing jobs reported with their reason."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fingerprint_core import jobs

QUICK_TRAIN = ("--spaces", "rgb", "--epochs", "2", "--device", "cpu")


@pytest.fixture
def ws(gray_workspace_root, tmp_path) -> Path:
    """A private copy of the toy grayscale workspace (rgb, freq fingerprints; no attributor)."""
    return Path(shutil.copytree(gray_workspace_root / "gm-gray", tmp_path / "gm-gray"))


def test_a_train_job_is_followed_to_its_end_and_a_second_start_is_refused(ws):
    from fingerprint_core.workspace import Workspace

    job = jobs.start(ws, "train", QUICK_TRAIN)
    assert job.running and job.kind == "train" and job.pid
    assert job.command[1:5] == ["-m", "fingerprint_core.cli", "train", str(ws.resolve())]
    with pytest.raises(jobs.JobError, match="a train job already runs on workspace gm-gray"):
        jobs.start(ws, "train", QUICK_TRAIN)

    done = jobs.wait(ws, "train", timeout=180)

    assert done.state == "finished" and done.exit_code == 0 and done.error is None, done
    assert done.step == done.messages[-1] and done.messages[0] == "loading the rgb artifacts"
    assert done.messages[-1].startswith("rgb: test accuracy (model)")
    assert "rgb" in Workspace.open(ws).manifest["attribution"]["attributors"]  # what it trained is in the workspace
    record = json.loads(jobs.record_path(ws, "train").read_text())
    assert record["kind"] == "train" and record["pid"] == done.pid and record["started"]
    assert any("test accuracy per head" in line for line in done.log_tail(20))  # the CLI's own output, in the log
    assert not list(jobs.folder(ws).glob(".*tmp*")) and not list(jobs.folder(ws).glob("*.starting"))
    assert jobs.running(ws) == []


def test_a_failing_job_records_the_reason(ws):
    jobs.start(ws, "train", ["--spaces", "sl"])  # the toy workspace has no SL artifacts

    done = jobs.wait(ws, "train", timeout=120)

    assert done.state == "failed" and done.exit_code == 1
    assert "cannot train sl" in done.error and "rgb, freq" in done.error
    assert any(line.startswith("error: workspace") for line in done.log_tail())


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("starter_knows_it", [True, False], ids=["same-process", "another-process"])
def test_a_killed_job_is_reported_as_stopped_unexpectedly(ws, starter_knows_it):
    job = jobs.start(ws, "train", QUICK_TRAIN)
    child = jobs._CHILDREN[job.pid]
    if not starter_knows_it:  # as after an app restart: no Popen handle, only the pid in the record
        del jobs._CHILDREN[job.pid]
    os.kill(job.pid, signal.SIGKILL)
    if starter_knows_it:
        child.wait(10)
    else:  # the unreaped child is a zombie: it must still count as gone
        deadline = time.monotonic() + 10
        while (stat := jobs._proc_stat(job.pid)) and stat[0] not in "ZX" and time.monotonic() < deadline:
            time.sleep(0.05)

    done = jobs.status(ws, "train")

    assert done.state == "failed" and done.error.startswith("stopped unexpectedly: process")
    assert ("killed by signal 9" in done.error) == starter_knows_it
    assert json.loads(jobs.record_path(ws, "train").read_text())["state"] == "failed"  # recorded for every reader
    child.wait(10)
    again = jobs.start(ws, "train", ["--spaces", "sl"])  # a stopped job does not block the next start
    assert jobs.wait(ws, "train", timeout=120).pid == again.pid


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM cannot be caught on Windows")
def test_a_terminated_job_records_that_it_was_stopped(ws):
    job = jobs.start(ws, "analyze")
    deadline = time.monotonic() + 30
    while not jobs.progress_path(ws, "analyze").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the job has set its handler once it writes its first progress
    os.kill(job.pid, signal.SIGTERM)

    done = jobs.wait(ws, "analyze", timeout=60)

    assert (done.state, done.exit_code) == ("failed", 143)
    assert done.error == "stopped (SIGTERM); what it finished is kept in the workspace"


def test_a_start_is_refused_while_another_run_writes_the_workspace(ws):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fingerprint_core.workspace import Workspace\n"
         "with Workspace.open(sys.argv[1]).writing():\n    print('held', flush=True)\n    time.sleep(60)\n", str(ws)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(jobs.JobError, match="gm-gray is being written by another run"):
            jobs.start(ws, "analyze")
    finally:
        holder.kill()
        holder.wait()
    assert jobs.status(ws, "analyze") is None  # nothing was started


def test_the_cli_writes_epochs_and_its_end_to_the_progress_file(ws, tmp_path, monkeypatch, one_thread):
    from fingerprint_core import cli

    writes = []
    real_write = jobs._write_json
    monkeypatch.setattr(jobs, "_write_json", lambda path, obj: (writes.append(dict(obj)), real_write(path, obj)))
    monkeypatch.setattr(jobs.JobProgress, "MIN_INTERVAL_S", 0.0)  # every state written, to see them all
    before = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main(["train", str(ws), "--spaces", "rgb", "--epochs", "2", "--device", "cpu",
                         "--progress-file", str(tmp_path / "p.json")])
    finally:
        signal.signal(signal.SIGTERM, before)

    assert code == 0
    epochs = [(w["n"], w["total"]) for w in writes if w["step"].startswith("training the rgb attributor")]
    assert epochs[0] == (1, 2) and all(total == 2 for _, total in epochs)
    assert writes[0]["step"].startswith("starting") and writes[-1]["state"] == "finished"
    assert json.loads((tmp_path / "p.json").read_text())["exit_code"] == 0


def test_progress_is_written_atomically_and_throttled(tmp_path, monkeypatch):
    writes = []
    real_write = jobs._write_json
    monkeypatch.setattr(jobs, "_write_json", lambda path, obj: (writes.append(dict(obj)), real_write(path, obj)))
    path = tmp_path / "p.json"
    progress = jobs.JobProgress(path)
    bar = progress.task("embedding", 1000)
    for _ in range(1000):  # a burst far faster than the interval
        bar.update()
    progress.log("half way")

    assert len(writes) <= 2  # the first state, perhaps one more; the rest waits for the interval
    time.sleep(jobs.JobProgress.MIN_INTERVAL_S + 0.3)
    state = json.loads(path.read_text())
    assert (state["step"], state["n"], state["total"], state["messages"]) == ("embedding", 1000, 1000, ["half way"])
    assert state["state"] == "running" and state["pid"] == os.getpid()
    progress.finish(2)
    state = json.loads(path.read_text())
    assert (state["state"], state["exit_code"], state["error"]) == ("failed", 2, "exited with status 2")
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary file left


def test_the_log_tail_shows_what_a_terminal_would(tmp_path):
    (tmp_path / jobs.FOLDER).mkdir()
    jobs.log_path(tmp_path, "analyze").write_bytes(
        b"$ manifpt analyze ws\nanalysis:   0%| 0/5\ranalysis:  40%| 2/5\ranalysis: 100%| 5/5\nrgb: done\n\n")

    assert jobs.log_tail(tmp_path, "analyze") == ["$ manifpt analyze ws", "analysis: 100%| 5/5", "rgb: done"]
    assert jobs.log_tail(tmp_path, "train") == []
    assert jobs.status(tmp_path, "train") is None
