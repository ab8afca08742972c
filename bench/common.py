"""What every benchmark does with its results: keep them under bench/results/ and show them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, results: dict[str, Any]) -> None:
    """Write bench/results/<name>.json (not committed) and print the same figures."""
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(results, indent=2)
    (RESULTS / f"{name}.json").write_text(text)
    print(text)
