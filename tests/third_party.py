"""Where the upstream Co-Tracker and DEVA snapshots used as test fixtures live, and skip markers.

``TRACKGO_THIRD_PARTY`` overrides the folder (default: ``third_party`` in the ``shared`` folder
beside the repository). The snapshots are only read.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = Path(os.environ.get("TRACKGO_THIRD_PARTY", ROOT.parent / "shared" / "third_party"))
CO_TRACKER = THIRD_PARTY / "co-tracker"


def _deva_importable() -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None
                   for m in ("deva.ext.automatic_processor", "segment_anything", "timm", "pulp"))
    except ImportError:
        return False


requires_cotracker = pytest.mark.skipif(not (CO_TRACKER / "hubconf.py").is_file(),
                                        reason=f"no Co-Tracker clone at {CO_TRACKER}")
requires_deva = pytest.mark.skipif(not _deva_importable(),
                                   reason="DEVA automatic mode is not installed (make setup-paper)")


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and folder under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out
