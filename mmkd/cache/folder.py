"""What a cache folder may hold, so that `cache-teacher --overwrite` deletes only what mmkd wrote.

A cache folder holds `build.json`, `manifest.json`, `summary.json`, `lock`, `shards/` (each complete
shard holding exactly the files its `shard.json` lists; a shard being written, `NNNNN.tmp/`, zarr's
and mmkd's file names) and `verified/` (markers `NNNNN.json`). Anything else is the user's.
"""

from __future__ import annotations

import json
import re

from mmkd.cache.manifest import MEMBER

# What a cache folder holds; `--overwrite` deletes nothing else.
CACHE_ENTRIES = {"build.json", "manifest.json", "summary.json", "shards", "lock", "lock.held", "verified"}
_SHARD = re.compile(r"\d{5}(\.tmp)?")
_MARKER = re.compile(r"(\.?\d{5}\.json(\.tmp-?\d+)?|\.probe-\d+)")
# A file being replaced atomically (mmkd/atomic.py), left by a crash: `.manifest.json.tmp-123`.
_ASIDE = re.compile(r"\.(build|manifest|summary)\.json\.tmp-\d+")


def is_build_record(fs, root: str) -> bool:
    """Does `root/build.json` hold what `cache-teacher` writes there (not a user's file of that name)?"""
    try:
        with fs.open(f"{root.rstrip('/')}/build.json", "r") as f:
            record = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and record.get("format") == "mmkd-teacher-cache"


def foreign_files(fs, root: str) -> list[str]:
    """Files in a cache folder that mmkd did not write: anything but its own entries, a complete
    shard's files other than those its shard.json lists, markers that are not markers."""
    base = root.rstrip("/")
    listed: dict[str, set] = {}
    out = []
    for path in sorted(fs.find(base, withdirs=False)):
        rel = path[len(base) + 1:] if path.startswith(base + "/") else path
        parts = rel.split("/")
        if len(parts) == 1 and _ASIDE.fullmatch(rel):
            continue
        if parts[0] not in CACHE_ENTRIES or (parts[0] != "shards" and parts[0] != "verified" and len(parts) > 1):
            out.append(rel)
        elif parts[0] == "shards":
            if len(parts) < 3 or not _SHARD.fullmatch(parts[1]):
                out.append(rel)
            elif parts[1].endswith(".tmp"):          # a shard being written: zarr's and mmkd's names only
                if not MEMBER.fullmatch("/".join(parts[2:])):
                    out.append(rel)
            else:
                if parts[1] not in listed:
                    try:
                        with fs.open(f"{base}/shards/{parts[1]}/shard.json", "r") as f:
                            listed[parts[1]] = set(json.load(f)["sha256"]) | {"shard.json"}
                    except (OSError, ValueError, KeyError, TypeError):
                        listed[parts[1]] = set()
                if "/".join(parts[2:]) not in listed[parts[1]]:
                    out.append(rel)
        elif parts[0] == "verified" and (len(parts) != 2 or not _MARKER.fullmatch(parts[1])):
            out.append(rel)
    return out
