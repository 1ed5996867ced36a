"""Each driver benchmark owns one marked section of benchmarks/RESULTS.md (after "## Drivers")."""
from __future__ import annotations

from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_section(name: str, text: str) -> None:
    """Replace the section of benchmark `name` (text includes its markers), or append it."""
    begin, end = markers(name)
    current = RESULTS_MD.read_text()
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        updated = head + text + rest.split(end, 1)[1].lstrip("\n")
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    RESULTS_MD.write_text(updated)
