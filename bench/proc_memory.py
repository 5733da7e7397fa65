"""Memory of a process tree as the benchmarks report it: anonymous pages (RssAnon), not mapped files.

Memory-mapped reference stores and workspace files are page cache the kernel can drop, so they
are left out; Ray actors and other children are counted with the process that started them.
"""

from __future__ import annotations

import os
import threading


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_anon_bytes(root: int | None = None) -> int:
    """Sum of RssAnon over a process (default: this one) and all its descendants."""
    total, todo, seen = 0, [root or os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_anon(pid)
        todo += _children(pid)
    return total


class PeakMemory:
    """Samples this process tree's anonymous memory every `every` seconds; the peak since reset()."""

    def __init__(self, every: float = 0.1) -> None:
        self.peak, self.every = 0, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return tree_anon_bytes()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.every)

    def reset(self) -> None:
        self.peak = self.now()

    def stop(self) -> None:
        self._stop.set()
