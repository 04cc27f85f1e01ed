"""Files of DIDs, one per line (``#`` comments and blank lines ignored): allowlists and trust lists."""

from __future__ import annotations

from pathlib import Path


def load_did_list(path: str | None) -> frozenset[str]:
    """The DIDs listed in ``path`` (empty when no path); an OSError when it cannot be read."""
    if not path:
        return frozenset()
    lines = Path(path).read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
