"""Long runs (`manifpt train`, `manifpt analyze`) started as detached processes and followed through files.

The app starts a job here and reads its state back on every rerun, so a rerun, a page switch or a
closed tab neither stops nor blocks it. Per workspace and kind of job (docs/workspace.md)::

    WS/.jobs/<kind>.json            the job record: kind, pid, started, command; written by the starter
                                    (and by a reader that finds the process gone without an end)
    WS/.jobs/<kind>.progress.json   written by the job itself (`--progress-file`): step, n, total, last
                                    messages, and at the end its state, exit code and error
    WS/.jobs/<kind>.log             the job's stdout and stderr

Every JSON file is written atomically (temporary name, fsync, rename). The two writers never write
the same file, so neither can lose the other's update; the progress file carries the id the starter
gave the job ($MANIFPT_JOB_ID), so a left-over of an earlier job is never read as this one's. Whether a process still runs is asked of
psutil when it is installed; otherwise of the OS: the Popen handle of a job this process started
(which also reaps it), OpenProcess / GetExitCodeProcess on Windows, os.kill(pid, 0) and
/proc/<pid>/stat (zombie state, start time against pid reuse) on POSIX.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fingerprint_core.fsio import atomic_write

KINDS = ("train", "analyze")  # `manifpt <kind> WS ...`
FOLDER = ".jobs"
STALE_START_S = 30.0  # a start guard older than this was left by a starter that died
MESSAGES_KEPT = 20
LOG_TAIL_BYTES = 64 * 1024
STOPPED = "stopped unexpectedly"
JOB_ID_ENV = "MANIFPT_JOB_ID"  # the starter's id for the job, which the job writes into its progress file
RUNNING, FINISHED, FAILED = "running", "finished", "failed"

_CHILDREN: dict[int, subprocess.Popen] = {}  # jobs this process started: poll() tells their end and reaps them


class JobError(RuntimeError):
    """A job that cannot start (one of its kind already runs, or the workspace is being written)."""


@dataclass
class Job:
    """What is known of a workspace's latest job of one kind (the record and the job's own progress, merged)."""

    kind: str
    workspace: Path
    pid: int | None
    started: str
    command: list[str]
    state: str  # running | finished | failed
    exit_code: int | None = None
    error: str | None = None
    ended: str | None = None
    step: str = ""
    n: int = 0
    total: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def fraction(self) -> float | None:
        """Share of the current step done, or None when the step has no known size."""
        return min(max(self.n / self.total, 0.0), 1.0) if self.total > 0 else None

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    @property
    def log(self) -> Path:
        return log_path(self.workspace, self.kind)

    def log_tail(self, lines: int = 12) -> list[str]:
        """The last lines of the job's log, as a terminal shows them (a progress bar's redraws collapsed)."""
        return log_tail(self.workspace, self.kind, lines)

    def seconds(self) -> float | None:
        """Seconds from the start to the end (or to now while it runs)."""
        try:
            start = _dt.datetime.fromisoformat(self.started)
            end = _dt.datetime.fromisoformat(self.ended) if self.ended else _dt.datetime.now(_dt.timezone.utc)
        except (TypeError, ValueError):
            return None
        return (end - start).total_seconds()


# ---- files ---------------------------------------------------------------------------------------------------


def folder(workspace: str | os.PathLike) -> Path:
    """The workspace's job folder."""
    return Path(workspace) / FOLDER


def record_path(workspace: str | os.PathLike, kind: str) -> Path:
    """The job record of a kind (written by the starter)."""
    return folder(workspace) / f"{kind}.json"


def progress_path(workspace: str | os.PathLike, kind: str) -> Path:
    """The progress file of a kind (written by the job)."""
    return folder(workspace) / f"{kind}.progress.json"


def log_path(workspace: str | os.PathLike, kind: str) -> Path:
    """The job's stdout and stderr."""
    return folder(workspace) / f"{kind}.log"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: dict) -> None:
    """Atomic write; retried briefly where a reader holding the file open blocks the rename (Windows)."""
    data = json.dumps(obj, indent=1).encode()
    for attempt in range(5):
        try:
            atomic_write(path, data)
            return
        except PermissionError:
            if attempt == 4:
                raise
            time.sleep(0.05)


def _read_json(path: Path) -> dict | None:
    """The file's JSON object, or None when there is none (or it cannot be read)."""
    for _ in range(3):
        try:
            obj = json.loads(path.read_text())
            return obj if isinstance(obj, dict) else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a rename under way on Windows; a damaged file stays unreadable
            time.sleep(0.05)
    return None


def log_tail(workspace: str | os.PathLike, kind: str, lines: int = 12) -> list[str]:
    """The last lines of a job's log (tqdm's carriage-return redraws keep only their last state)."""
    path = log_path(workspace, kind)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    if size > LOG_TAIL_BYTES:
        shown = shown[1:]  # the first line is cut
    return [line for line in shown if line.strip()][-lines:]


# ---- is the process alive? ---------------------------------------------------------------------------------


def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _process_stamp(pid: int) -> str | None:
    """When the process started, to tell it from a later process given the same pid (None where unknown)."""
    psutil = _psutil()
    if psutil is not None:
        try:
            return f"psutil:{psutil.Process(pid).create_time():.2f}"
        except (psutil.Error, OSError):
            return None
    stat = _proc_stat(pid)
    return f"proc:{stat[19]}" if stat and len(stat) > 19 else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _windows_alive(pid: int) -> bool:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists, someone else's
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def alive(pid: int | None, stamp: str | None = None) -> bool:
    """Whether the process pid runs (not a zombie), and is the one whose start stamp was recorded."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    psutil = _psutil()
    if psutil is not None:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True
    elif os.name == "nt":
        if not _windows_alive(pid):
            return False
    else:
        try:
            os.kill(pid, 0)  # signal 0 only asks whether the pid exists (POSIX; on Windows it would kill)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, someone else's
        stat = _proc_stat(pid)
        if stat and stat[0] in ("Z", "X"):
            return False
    now = _process_stamp(pid)
    if stamp and now and stamp.split(":", 1)[0] == now.split(":", 1)[0] and stamp != now:
        return False  # the pid was given to another process since
    return True


# ---- reading a job's state -----------------------------------------------------------------------------------


def _same_job(record: dict, progress: dict | None) -> bool:
    """Whether the progress file is the recorded job's (not a left-over): by the id the starter gave it, else by
    pid (on Windows a venv's python.exe is a launcher whose child is the interpreter, so the pids differ)."""
    if progress is None:
        return False
    if record.get("id") and progress.get("job"):
        return record["id"] == progress["job"]
    return progress.get("pid") == record.get("pid")


def _ended(record: dict, progress: dict | None) -> bool:
    return _same_job(record, progress) and progress.get("state") in (FINISHED, FAILED)


def _merge(workspace: Path, record: dict, progress: dict | None) -> Job:
    job = Job(kind=record["kind"], workspace=workspace, pid=record.get("pid"), started=record.get("started", ""),
              command=list(record.get("command", [])), state=record.get("state", RUNNING),
              exit_code=record.get("exit_code"), error=record.get("error"), ended=record.get("ended"))
    if _same_job(record, progress):
        job.step = str(progress.get("step", ""))
        job.n, job.total = int(progress.get("n", 0) or 0), int(progress.get("total", 0) or 0)
        job.messages = [str(m) for m in progress.get("messages", [])]
        if job.state == RUNNING and _ended(record, progress):
            job.state, job.exit_code = progress["state"], progress.get("exit_code")
            job.error, job.ended = progress.get("error"), progress.get("ended")
    return job


def _why_stopped(pid: int | None) -> dict:
    code = _CHILDREN[pid].returncode if pid in _CHILDREN else None
    how = ""
    if code is not None:
        how = f" (killed by signal {-code})" if code < 0 else f" (exit status {code})"
    return {"exit_code": code, "error": f"{STOPPED}: process {pid} ended{how} without recording its end; killed, "
                                        "out of memory, or the machine restarted? Its log may say more"}


def status(workspace: str | os.PathLike, kind: str) -> Job | None:
    """The workspace's latest job of this kind (None if none was started); a process that died without
    recording its end is recorded as failed, stopped unexpectedly."""
    ws = Path(workspace)
    record = _read_json(record_path(ws, kind))
    if record is None or record.get("kind") != kind:
        return None
    progress = _read_json(progress_path(ws, kind))
    if record.get("state", RUNNING) == RUNNING and not _ended(record, progress):
        if not alive(record.get("pid"), record.get("pid_stamp")):
            progress = _read_json(progress_path(ws, kind))  # it may have recorded its end just before exiting
            if not _ended(record, progress):
                record.update(state=FAILED, ended=_now(), **_why_stopped(record.get("pid")))
                with contextlib.suppress(OSError):
                    _write_json(record_path(ws, kind), record)
    return _merge(ws, record, progress)


def running(workspace: str | os.PathLike) -> list[Job]:
    """The workspace's jobs that run now."""
    return [j for k in KINDS if (j := status(workspace, k)) is not None and j.running]


def wait(workspace: str | os.PathLike, kind: str, timeout: float = 600.0, poll_s: float = 0.2) -> Job:
    """Block until the job of this kind has ended (TimeoutError after timeout seconds); returns its state."""
    deadline = time.monotonic() + timeout
    while True:
        job = status(workspace, kind)
        if job is None:
            raise JobError(f"no {kind} job was started on {workspace}")
        if not job.running:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {kind} job on {workspace} still runs after {timeout:.0f} s")
        time.sleep(poll_s)


# ---- starting one --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _start_guard(jobs: Path, kind: str) -> Iterator[None]:
    """One start of a kind at a time (two tabs clicking at once): an exclusively created marker file."""
    marker = jobs / f"{kind}.starting"
    busy = JobError(f"another {kind} job is being started on this workspace; wait a moment")
    for _ in range(2):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                age = time.time() - marker.stat().st_mtime
            except OSError:
                continue
            if age < STALE_START_S:
                raise busy from None
            marker.unlink(missing_ok=True)  # left by a starter that died
    else:
        raise busy
    os.close(fd)
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _detached() -> dict:
    """Popen arguments that let the job outlive the app's process and its session."""
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) | getattr(subprocess, "DETACHED_PROCESS", 0x8)
        return {"creationflags": flags}
    return {"start_new_session": True}


def command(workspace: Path, kind: str, args: Sequence[str] = ()) -> list[str]:
    """The job's command line: this Python running the `manifpt` CLI, its progress into the job folder."""
    return [sys.executable, "-m", "fingerprint_core.cli", kind, str(workspace), *map(str, args),
            "--progress-file", str(progress_path(workspace, kind))]


def start(workspace: str | os.PathLike, kind: str, args: Sequence[str] = ()) -> Job:
    """Start `manifpt <kind> WS <args>` as a detached process and record it; JobError when one of the same
    kind already runs on this workspace, or another run writes the workspace."""
    from fingerprint_core.workspace import Workspace

    if kind not in KINDS:
        raise ValueError(f"job kind {kind!r}: choose from {', '.join(KINDS)}")
    ws_path = Path(workspace).resolve()
    ws = Workspace.open(ws_path)  # WorkspaceError when it is not one
    jobs = folder(ws_path)
    if jobs.is_symlink():  # its files are removed and replaced: only in a folder of the workspace's own
        raise JobError(f"{jobs} is a symbolic link; remove it (the app keeps its job records there)")
    jobs.mkdir(exist_ok=True)
    with _start_guard(jobs, kind):
        current = status(ws_path, kind)
        if current is not None and current.running:
            raise JobError(f"a {kind} job already runs on workspace {ws_path.name} (process {current.pid}, "
                           f"started {current.started}); wait for it to finish")
        if ws.busy():
            raise JobError(f"workspace {ws_path.name} is being written by another run (fingerprint, train or "
                           "analyze); start again when it has finished")
        cmd = command(ws_path, kind, args)
        progress_path(ws_path, kind).unlink(missing_ok=True)
        root = str(Path(__file__).resolve().parents[1])  # fingerprint_core importable without an install
        job_id = uuid.uuid4().hex
        env = {**os.environ, "PYTHONUNBUFFERED": "1", JOB_ID_ENV: job_id,
               "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(log_path(ws_path, kind), "wb") as log:
            log.write(f"$ {shlex.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    **_detached())
        _CHILDREN[proc.pid] = proc
        record = {"kind": kind, "id": job_id, "pid": proc.pid, "pid_stamp": _process_stamp(proc.pid), "started": _now(),
                  "command": cmd, "state": RUNNING}
        _write_json(record_path(ws_path, kind), record)
    return status(ws_path, kind) or _merge(ws_path, record, None)


# ---- the job's side: progress and its end (`manifpt ... --progress-file PATH`) ---------------------------------


class JobProgress:
    """The pipeline's Progress interface, written to a job's progress file: atomically, at most a few writes
    a second (a timer writes the last state of a burst); finish() records the end."""

    MIN_INTERVAL_S = 0.3

    def __init__(self, path: str | os.PathLike, *, inner=None) -> None:
        self.path = Path(path)
        self.inner = inner  # another Progress to forward to (the CLI's tqdm bars, into the log)
        self._state = {"job": os.environ.get(JOB_ID_ENV), "pid": os.getpid(), "state": RUNNING,
                       "step": "starting (loading the libraries)", "n": 0, "total": 0, "messages": [], "updated": _now()}
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._failed_write = False
        self._write()

    def wrapping(self, inner) -> JobProgress:
        """Forward to inner as well; returns self."""
        self.inner = inner
        return self

    # the Progress interface
    def task(self, desc: str, total: int) -> _JobTask:
        inner = self.inner.task(desc, total) if self.inner is not None else None
        self.set(desc, 0, total)
        return _JobTask(self, desc, total, inner)

    def update(self, n: int = 1) -> None:
        if self.inner is not None:
            self.inner.update(n)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def log(self, message: str) -> None:
        if self.inner is not None:
            self.inner.log(message)
        with self._lock:
            self._state["messages"] = [*self._state["messages"], str(message)][-MESSAGES_KEPT:]
        self._changed()

    # direct use (the training's epochs)
    def set(self, step: str, n: int, total: int) -> None:
        """The current step and how far it is: n of total (total 0 when unknown)."""
        with self._lock:
            self._state.update(step=str(step), n=int(n), total=int(total))
        self._changed()

    def finish(self, exit_code: int, error: str | None = None) -> None:
        """Record the end: finished when exit_code is 0, else failed with the reason."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if exit_code != 0 and not error:
                error = f"exited with status {exit_code}"
            self._state.update(state=FINISHED if exit_code == 0 else FAILED, exit_code=int(exit_code),
                               error=error, ended=_now())
        self._write()

    def _changed(self) -> None:
        with self._lock:
            wait = self.MIN_INTERVAL_S - (time.monotonic() - self._last)
            if wait > 0:
                if self._timer is None:  # the last state of a burst is written when the interval is over
                    self._timer = threading.Timer(wait, self._write)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._write()

    def _write(self) -> None:
        with self._lock:
            self._timer = None
            self._state["updated"] = _now()
            self._last = time.monotonic()
            try:
                _write_json(self.path, self._state)
            except OSError as e:  # the job goes on; its end is still in the log
                if not self._failed_write:
                    print(f"warning: cannot write the job's progress to {self.path}: {e}", file=sys.stderr)
                self._failed_write = True


class _JobTask:
    """One step of a JobProgress (what Progress.task returns)."""

    def __init__(self, job: JobProgress, desc: str, total: int, inner) -> None:
        self.job, self.desc, self.total, self.n, self.inner = job, desc, total, 0, inner

    def task(self, desc: str, total: int) -> _JobTask:
        return self.job.task(desc, total)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.inner is not None:
            self.inner.update(n)
        self.job.set(self.desc, self.n, self.total)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def log(self, message: str) -> None:
        self.job.log(message)
