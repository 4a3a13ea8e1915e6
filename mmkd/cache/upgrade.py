"""`mmkd cache upgrade`: a format-1 cache made self-contained (format 2).

Format 1 stored the teacher's word lists but not the pairs' text, so training also opened the
prepared corpus the manifest pointed at. The upgrade reads that corpus (it must have the
fingerprint and pair count the manifest recorded), adds `en` and `x` to every shard's meta.arrow
(written aside and renamed), updates each shard's sizes and checksums, and rewrites the manifest
as format 2 without the corpus path. The teacher's tensors are not touched. It holds the cache's
writer lock from its first read (a `cache-teacher` running there refuses it); an interrupted
upgrade can be run again. Every file is replaced atomically and durably (mmkd/atomic.py).

Nothing is trusted that the upgrade would vouch for: before it writes, every shard name must be
the shard's own (`00000`, ...; a manifest cannot send it outside the cache) and every file of every
shard must match the checksum the version-1 manifest recorded, so a corrupt file is reported, not
given a fresh checksum.
"""

from __future__ import annotations

import fsspec
import pyarrow as pa

from mmkd.atomic import fs_write_bytes, fs_write_text
from mmkd.cache.format import FORMAT_VERSION, dumps, member_path, read_json, sha256_file, shard_name
from mmkd.cache.reader import shard_path
from mmkd.errors import CacheError
from mmkd.lock import Lock


def upgrade_cache(path: str, data_dir: str, corpus: str | None = None, log=print) -> str:
    """Upgrade the format-1 cache at `path` in place, holding its writer lock from the first read."""
    url = path.rstrip("/")
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root) or not fs.exists(f"{root}/manifest.json"):
        raise CacheError(f"{url}: no teacher cache here (no manifest.json); give the folder `cache-teacher` wrote")
    with Lock(fs, root, url, "mmkd cache upgrade", CacheError):    # a writer running: refused before any read
        return _upgrade(url, fs, root, data_dir, corpus, log)


def _upgrade(url: str, fs, root: str, data_dir: str, corpus: str | None, log) -> str:
    from pathlib import Path

    from mmkd.corpus import open_corpus

    manifest = read_json(fs, f"{root}/manifest.json", "cache manifest")
    if not isinstance(manifest, dict):
        raise CacheError(f"{url}/manifest.json: not a cache manifest (a JSON {type(manifest).__name__})")
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        log(f"{url}: already format {FORMAT_VERSION}; nothing to do")
        return url
    if version != 1:
        raise CacheError(f"{url}: cache format version {version}; `cache upgrade` turns version 1 into {FORMAT_VERSION}")
    if not isinstance(manifest.get("shards"), list) or not isinstance(manifest.get("corpus"), dict):
        raise CacheError(f"{url}/manifest.json: no shards or corpus record; not a cache mmkd can upgrade")
    bases = []
    for k, record in enumerate(manifest["shards"]):
        if not isinstance(record, dict) or record.get("name") != shard_name(k) or \
                not isinstance(record.get("sha256"), dict):
            raise CacheError(f"{url}/manifest.json: shard {k} is recorded as {str(record)[:80]!r}, not shard "
                             f"{shard_name(k)} with its checksums; refused (the manifest is corrupt or was edited)")
        bases.append(shard_path(fs, root, record["name"], url))    # never a link to a folder outside the cache
    want = manifest["corpus"]
    recorded = want.get("path")
    if corpus is None and recorded and (Path(recorded) / "meta.json").is_file():
        corpus = recorded   # where it was when the cache was written, if it is still there
    prepared = open_corpus(corpus or want["name"], data_dir)
    if prepared.fingerprint != want["fingerprint"] or len(prepared) != manifest["n_sentences"]:
        raise CacheError(f"{url} was written for corpus {want['name']!r} with fingerprint {want['fingerprint'][:16]} "
                         f"({manifest['n_sentences']} pairs), but {prepared.path} has {prepared.fingerprint[:16]} "
                         f"({len(prepared)} pairs): give the corpus it was made from (--data-dir / --corpus)")
    for record, base in zip(manifest["shards"], bases):      # verify everything before changing anything
        where = f"{url} shard {record['name']}"
        for name, digest in sorted(record["sha256"].items()):
            if sha256_file(fs, member_path(fs, base, name, where)) != digest:
                raise CacheError(f"{where}: file {name} does not match its checksum in the manifest (corrupt); "
                                 "nothing was upgraded: rebuild the cache")
    for record, base in zip(manifest["shards"], bases):
        where = f"{url} shard {record['name']}"
        meta_path = member_path(fs, base, "meta.arrow", where)
        try:
            with fs.open(meta_path, "rb") as f:
                table = pa.ipc.open_file(pa.BufferReader(f.read())).read_all()
        except (OSError, pa.ArrowException) as e:
            raise CacheError(f"{meta_path}: unreadable ({str(e).splitlines()[0][:120]}); rebuild the cache") from None
        if "x" not in table.column_names:
            english, targets = prepared.rows(table.column("pair_id").to_numpy())
            table = table.append_column("en", pa.array(english, pa.string())).append_column(
                "x", pa.array(targets, pa.string()))
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            fs_write_bytes(fs, meta_path, sink.getvalue().to_pybytes())
        record["sha256"]["meta.arrow"] = sha256_file(fs, meta_path)
        if "bytes" in record:
            record["bytes"]["meta.arrow"] = int(fs.size(meta_path))
        fs_write_text(fs, f"{base}/shard.json", dumps(record))
    manifest["format_version"] = FORMAT_VERSION
    manifest["corpus"] = {k: v for k, v in want.items() if k != "path"}
    for name in ("build.json", "manifest.json"):     # the manifest last: it says the upgrade is complete
        if fs.exists(f"{root}/{name}"):
            record = manifest if name == "manifest.json" else {
                **read_json(fs, f"{root}/{name}", "build record"), "format_version": FORMAT_VERSION,
                "corpus": manifest["corpus"]}
            fs_write_text(fs, f"{root}/{name}", dumps(record))
    log(f"{url}: upgraded to format {FORMAT_VERSION} ({len(manifest['shards'])} shards; the text of "
        f"{manifest['n_sentences']} pairs added from {prepared.path})")
    return url
