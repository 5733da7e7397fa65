"""The working-set setting: how much memory one step of the core may hold at a time.

The search, the embedding and the artifact writing size their chunks from it, so a run's peak
memory follows this setting rather than the number or the size of the images.
"""

from __future__ import annotations

import os

DEFAULT_MB = 2048


def working_set_bytes() -> int:
    """Bytes one step may hold ($MANIFPT_WORKING_SET_MB, default 2048 MiB; at least 64 MiB)."""
    raw = os.environ.get("MANIFPT_WORKING_SET_MB", "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MB
    except ValueError:
        raise ValueError(f"MANIFPT_WORKING_SET_MB={raw!r} is not a number of megabytes") from None
    return int(max(64.0, mb) * 2**20)


def rows_per_chunk(row_bytes: int, share: float = 1.0, *, at_least: int = 1) -> int:
    """How many rows of row_bytes each fit in `share` of the working set."""
    return max(at_least, int(working_set_bytes() * share) // max(1, int(row_bytes)))
