"""Long runs started from the app (train, analyze) as background jobs, and the panel that follows them.

The job runs in its own process (fingerprint_core.jobs), so a rerun, a page switch or a closed tab
does not stop it; the page finds it again from its record in the workspace and follows it in a
fragment that reruns every two seconds. When it ends the whole page reruns: the workspace's stamp
has changed, so the cached loaders read the new analysis or attributors.
"""

from __future__ import annotations

import streamlit as st

from app.text import md
from fingerprint_core import jobs
from fingerprint_core.workspace import WorkspaceError

JOB_ARGS: dict[str, tuple[str, ...]] = {"train": (), "analyze": ()}  # extra CLI arguments (tests make them quick)
FOLLOWED_KEY = "jobs_followed"  # session_state: {(path, kind)} of jobs this session saw run, to announce their end
LOG_LINES = 8
FOLLOW_EVERY = "2s"


def when(iso: str) -> str:
    """A recorded UTC time, readable: 2026-05-01 14:03:07 UTC."""
    return iso.replace("T", " ").replace("+00:00", " UTC")


def step_text(job: jobs.Job) -> str:
    """The progress line of a running job: its step, how far, and for how long it runs."""
    far = f" · {job.n} of {job.total}" if job.total > 0 else ""
    took = job.seconds()
    return f"{job.step or 'starting'}{far}" + (f" · {took:.0f} s" if took is not None else "")


def start(path: str, kind: str, args: tuple[str, ...] = ()) -> bool:
    """Start the job (True), or say why it cannot start (False)."""
    try:
        jobs.start(path, kind, (*JOB_ARGS.get(kind, ()), *args))
    except (jobs.JobError, WorkspaceError, OSError) as e:
        st.warning(f"Not started: {md(e)}", icon=":material/hourglass_top:")
        return False
    return True


@st.fragment(run_every=FOLLOW_EVERY)
def follow(path: str, kind: str, what: str) -> None:
    """A running job's progress and last log lines, redrawn every two seconds; the page reruns when it ends."""
    job = jobs.status(path, kind)
    if job is None or not job.running:
        st.rerun(scope="app")  # the page shows the result, or why it failed
        return
    # written into, not entered: leaving a `with st.status` marks it complete
    box = st.status(f"{what} runs in the background…", state="running", expanded=True)
    box.progress(job.fraction or 0.0, text=md(step_text(job)))
    box.code("\n".join(job.log_tail(LOG_LINES)) or "(no output yet)", language=None, wrap_lines=True)
    box.caption(f"Process {job.pid}, started {md(when(job.started))}. It goes on when you leave this page or close "
                "the tab; come back to follow it.")


def panel(path: str, kind: str, *, what: str, label: str, key: str, icon: str, help: str,
          args: tuple[str, ...] = ()) -> jobs.Job | None:
    """The start button of a job kind, disabled while one runs; the running job followed, or why the last failed."""
    job = jobs.status(path, kind)
    running = job is not None and job.running
    if st.button(label, icon=icon, key=key, help=help, disabled=running) and not running:
        if start(path, kind, args):
            st.rerun()
    if running:
        st.session_state.setdefault(FOLLOWED_KEY, set()).add((path, kind))
        follow(path, kind, what)
    elif job is not None and job.state == jobs.FAILED:
        st.error(f"{what} started here on {md(when(job.started))} failed: {md(job.error)}", icon=":material/error:")
        with st.expander("Its last log lines"):
            st.code("\n".join(job.log_tail(20)) or "(no output)", language=None, wrap_lines=True)
            st.caption(f"Full log: {md(job.log)}")
    return job


def announce(path: str, kind: str, done: str, *, what: str) -> None:
    """Above a page's result: a job of this kind that still runs (training commits each attributor as it
    finishes) followed; or, once after this session followed one to its end, that it finished."""
    job = jobs.status(path, kind)
    if job is not None and job.running:
        st.session_state.setdefault(FOLLOWED_KEY, set()).add((path, kind))
        follow(path, kind, what)
        return
    followed = st.session_state.get(FOLLOWED_KEY, set())
    if (path, kind) not in followed:
        return
    followed.discard((path, kind))
    if job is not None and job.state == jobs.FINISHED:
        took = job.seconds()
        st.success(f"{done}" + (f" in {took:.0f} s." if took is not None else "."), icon=":material/check_circle:")
    elif job is not None and job.state == jobs.FAILED:
        st.error(f"{what} failed: {md(job.error)}", icon=":material/error:")
