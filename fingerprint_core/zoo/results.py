"""What a zoo folder holds so far: its finished models' results, and the error a build stops with
(apart from build.py so that evaluate.py, which build.py calls, can read them too)."""

from __future__ import annotations

import json
from pathlib import Path


class BuildError(ValueError):
    """A build that cannot go on; the message names the model and what to do."""


def finished_results(out: Path) -> dict[str, dict]:
    """result.json of every finished model under out/models, by name."""
    results = {}
    for path in sorted((out / "models").glob("*/result.json")):
        try:
            results[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not finished (or damaged): it will be trained again
    return results
