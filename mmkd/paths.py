"""Default locations (shared by both stages, so neither imports the other for them)."""

from __future__ import annotations

import os


def default_data_dir() -> str:
    """Where prepared corpora live: $MMKD_DATA_DIR, else ./data."""
    return os.environ.get("MMKD_DATA_DIR", "data")
