"""Prepared parallel corpora: filter, deduplicate, shuffle, prune, write (paper 4.1).

A prepared corpus is a folder `<data_dir>/corpora/<name>/` holding
- `pairs.arrow`: an Arrow IPC file (uncompressed, so every process and data-loader worker
  memory-maps it and shares the page cache) with `pair_id` (int64, 0..N-1, the row number),
  `source` (int32, index into meta's `sources`), `source_line` (int64, line/row in that source),
  `en`, `x` (strings) — in the seeded shuffled order, so `pair_id` is stable for a fingerprint;
- `meta.json`: the `CorpusConfig` that made it, the counts of what was dropped and why, and the
  content fingerprint (sha256 over every `en\\tx\\n` row in order) that caches and runs record.

Length filter: the paper drops sentences under 10 or over 128 *tokens* without naming the
tokenizer. We count **words of `mmkd.words.split_words`** on each side by default: tokenizer-free,
so a prepared corpus does not depend on which teacher or student is used later, and CJK text
counts one word per ideograph. `length_tokenizer=NAME` counts a real tokenizer's sub-tokens
instead (e.g. the student's, to match the 128-token student input exactly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from mmkd import __version__
from mmkd.atomic import publish
from mmkd.corpus_sources import (
    OPUS_BASE_URL,
    OpusRef,
    PAPER_PAIRS,
    Pair,
    download_opus,
    fetch,
    hub_corpora,
    opus_refs,
    parse_pair,
    read_hf,
    read_moses,
    read_opus_zip,
    read_tsv,
)
from mmkd.errors import CorpusError
from mmkd.hf import load_tokenizer
from mmkd.hub_data import resolve
from mmkd.paths import default_data_dir
from mmkd.settings import SEED_MAX, setting
from mmkd.words import WORD_RULE_VERSION, split_words

CORPUS_FORMAT_VERSION = 2


@dataclass
class CorpusConfig:
    pair: str = setting("en-xx", "The language pair, English first: en-fr.", cli=False)
    name: str | None = setting(None, "Folder name of the prepared corpus; default: the pair.", cli=False)
    moses: tuple[str, str] | None = setting(None, "English file and other-language file (Moses).", cli=False)
    tsv: str | None = setting(None, "One pair per line: en<TAB>x.", cli=False)
    zip: str | None = setting(None, "An OPUS Moses zip, local path or URL.", cli=False)
    hf_dataset: str | None = setting(None, "A Hugging Face dataset with a 'translation' column.", cli=False)
    hf_config: str | None = setting(None, "Dataset config, e.g. de-en.")
    hf_split: str = setting("train", "Dataset split.")
    hf_columns: str | None = setting(None, "Two text columns EN,X instead of 'translation' (sentence-transformers' "
                                           "parallel-sentences-*: english,non_english).")
    source: str = setting("opus", "Where the paper's corpus for PAIR comes from when no file or dataset is given: opus "
                                  "= the OPUS object store's Moses zips; hub = the Hugging Face hub's parquet mirrors "
                                  "(Helsinki-NLP/europarl, Helsinki-NLP/multiun, cfilt/iitb-english-hindi), each at a "
                                  "pinned commit (`mmkd corpus sources`).", choices=("opus", "hub"))
    hub_revision: str | None = setting(None, "With source=hub: read this revision (branch, tag or commit) instead of "
                                             "the pinned commit; the commit it resolves to is recorded in meta.json.")
    opus_base_url: str = setting(help="Mirror of the OPUS object store, used when no source is given "
                                      "(default: $MMKD_OPUS_BASE_URL, else the OPUS object store).",
                                 factory=lambda: os.environ.get("MMKD_OPUS_BASE_URL", OPUS_BASE_URL))
    min_tokens: int = setting(10, "Drop a pair if either side has fewer tokens (paper 4.1).", min=0)
    max_tokens: int = setting(128, "Drop a pair if either side has more tokens (paper 4.1).", min=1)
    length_tokenizer: str | None = setting(None, "Count sub-tokens of this tokenizer instead of mmkd words "
                                                 "(the default).")
    max_pairs: int = setting(2_000_000, "Keep at most this many pairs after a seeded shuffle (paper 4.1: 2M).", min=1)
    seed: int = setting(0, "Shuffle seed.", min=0, max=SEED_MAX)
    max_line_chars: int = setting(20_000, "A longer line is an error (a broken file), not a long sentence.", min=1)
    data_dir: str = setting(help="Where prepared corpora are written.", factory=default_data_dir, cli=False)

    @property
    def out_name(self) -> str:
        return self.name or self.pair


def _length_counter(tokenizer_name: str | None) -> Callable[[list[str]], list[int]]:
    if tokenizer_name is None:
        return lambda texts: [len(split_words(t)) for t in texts]

    tok = load_tokenizer(tokenizer_name, what="length_tokenizer")
    return lambda texts: [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def _sources(cfg: CorpusConfig, progress: bool = True) -> Iterator[tuple[str, Iterable[Pair]]]:
    lang = parse_pair(cfg.pair)
    given = [s for s in (cfg.moses, cfg.tsv, cfg.zip, cfg.hf_dataset) if s]
    if len(given) > 1:
        raise CorpusError("give one source: --moses, --tsv, --zip or --hf-dataset")
    if cfg.moses:
        yield f"moses:{cfg.moses[0]}", read_moses(cfg.moses[0], cfg.moses[1], cfg.max_line_chars)
    elif cfg.tsv:
        yield f"tsv:{cfg.tsv}", read_tsv(cfg.tsv, cfg.max_line_chars)
    elif cfg.zip:
        # Member names come from the built-in table; any other pair matches by suffix only.
        ref = opus_refs(cfg.pair)[0] if cfg.pair in PAPER_PAIRS else OpusRef("*", "", lang)
        path = cfg.zip
        if "://" in path and not path.startswith("file://"):   # remote: fetched once into downloads/
            name = os.path.basename(path.split("?", 1)[0].rstrip("/")) or "corpus.zip"
            path = fetch(path, os.path.join(cfg.data_dir, "downloads", name), progress)
        yield f"zip:{cfg.zip}", read_opus_zip(path, ref, cfg.max_line_chars)
    elif cfg.hf_dataset:
        label = f"hf:{cfg.hf_dataset}" + (f"[{cfg.hf_columns}]" if cfg.hf_columns else "")
        yield label, read_hf(cfg.hf_dataset, cfg.hf_config, cfg.hf_split, lang, cfg.max_line_chars, cfg.hf_columns)
    elif cfg.source == "hub":  # the paper's corpora from their parquet mirrors on the hub
        for hub in hub_corpora(cfg.pair):
            revision = cfg.hub_revision or hub.revision
            commit = resolve(hub.repo_id, revision)
            yield (f"hub:{hub.repo_id}/{hub.config}@{commit or revision}",
                   read_hf(hub.repo_id, hub.config, hub.split, lang, cfg.max_line_chars, revision=commit or revision))
    else:  # the paper's OPUS corpora
        for ref in opus_refs(cfg.pair):
            path = download_opus(ref, os.path.join(cfg.data_dir, "downloads"), cfg.opus_base_url, progress)
            yield f"opus:{ref.corpus}/{ref.release}", read_opus_zip(path, ref, cfg.max_line_chars)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
CORPUS_FILES = ("pairs.arrow", "meta.json")


def check_name(name: str, what: str = "--name") -> str:
    """A corpus name is one path component: letters, digits, '.', '_', '-', not starting with '.'."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise CorpusError(f"{what} {name!r}: a corpus name is one folder name (letters, digits, '.', '_', '-'; "
                          "no '/', no '..', not starting with '.')")
    return name


def validate(cfg: CorpusConfig) -> None:
    parse_pair(cfg.pair)
    check_name(cfg.out_name, "--name" if cfg.name else "pair")
    for key, value in (("max_pairs", cfg.max_pairs), ("max_tokens", cfg.max_tokens),
                        ("max_line_chars", cfg.max_line_chars)):
        if value < 1:
            raise CorpusError(f"{key}={value}: must be at least 1")
    if cfg.min_tokens < 0 or cfg.min_tokens > cfg.max_tokens:
        raise CorpusError(f"min_tokens={cfg.min_tokens}: must be between 0 and max_tokens={cfg.max_tokens}")


def _output_folder(cfg: CorpusConfig, overwrite: bool) -> Path:
    """DATA_DIR/corpora/NAME, checked: an existing folder is replaced only if it is a prepared corpus
    holding nothing but mmkd's own files, and only with --overwrite."""
    root = Path(cfg.data_dir) / "corpora"
    for p in (Path(cfg.data_dir), root):
        if p.exists() and not p.is_dir():
            raise CorpusError(f"{p} is a file, not a folder; choose another --data-dir")
    out = root / cfg.out_name
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CorpusError(f"{out} exists and is not a folder mmkd made; choose another --name")
    if out.exists():
        if not (out / "meta.json").is_file():
            raise CorpusError(f"{out} exists and is not a prepared corpus; mmkd will not replace it: "
                              "choose another --name or move it away")
        if not overwrite:
            raise CorpusError(f"{out} already holds a prepared corpus; pass --overwrite to replace it")
        foreign = sorted(p.name for p in out.iterdir()
                         if p.name not in CORPUS_FILES or p.is_symlink() or not p.is_file())
        if foreign:
            raise CorpusError(f"{out} holds files mmkd did not write ({', '.join(foreign[:5])}); move them away "
                              "before replacing this corpus")
    return out


def fingerprint_rows(en: Iterable[str], x: Iterable[str]) -> str:
    h = hashlib.sha256()
    for a, b in zip(en, x):
        h.update(f"{a}\t{b}\n".encode("utf-8"))
    return h.hexdigest()


def prepare_corpus(cfg: CorpusConfig, progress: bool = True, overwrite: bool = False) -> Path:
    """Read, filter, deduplicate, shuffle and prune one language pair; write it; return its folder.

    Written into a hidden temporary folder beside the destination and renamed into place: nothing
    half-written is ever at DATA_DIR/corpora/NAME, and nothing mmkd did not write is deleted."""
    validate(cfg)
    out = _output_folder(cfg, overwrite)          # refuse early, before hours of reading
    kept = _read_filtered(cfg, progress)
    if not kept.en:
        raise CorpusError(f"{cfg.pair}: no pair survived the filters (read {kept.total}, dropped {kept.dropped}); "
                          f"check min_tokens={cfg.min_tokens} / max_tokens={cfg.max_tokens}")
    table, meta = _shuffled(cfg, kept)
    out = _output_folder(cfg, overwrite)          # again: another command may have written it meanwhile
    _publish_corpus(table, meta, out)
    return out


class _Kept:
    """The pairs that pass the filters, in reading order, with where each came from; the filters
    (length in the length unit, exact duplicates) run over batches of pairs."""

    def __init__(self, cfg: CorpusConfig):
        self.cfg, self.count = cfg, _length_counter(cfg.length_tokenizer)
        self.dropped = {"empty": 0, "too_short": 0, "too_long": 0, "duplicate": 0}
        self.seen: set[bytes] = set()
        self.en: list[str] = []
        self.x: list[str] = []
        self.line: list[int] = []
        self.src: list[int] = []
        self.sources: list[str] = []
        self.total = 0
        self.batch: list[tuple[int, int, str, str]] = []

    def add(self, src_i: int, line: int, en: str, x: str) -> None:
        self.total += 1
        en, x = en.strip(), x.strip()
        if not en or not x:
            self.dropped["empty"] += 1
            return
        self.batch.append((src_i, line, en, x))
        if len(self.batch) >= 4096:
            self.flush()

    def flush(self) -> None:
        batch, cfg = self.batch, self.cfg
        en_len = self.count([b[2] for b in batch])
        x_len = self.count([b[3] for b in batch])
        for (src_i, line, en, x), le, lx in zip(batch, en_len, x_len):
            if min(le, lx) < cfg.min_tokens:
                self.dropped["too_short"] += 1
            elif max(le, lx) > cfg.max_tokens:
                self.dropped["too_long"] += 1
            else:
                key = hashlib.blake2b(f"{en}\t{x}".encode("utf-8"), digest_size=12).digest()
                if key in self.seen:
                    self.dropped["duplicate"] += 1
                    continue
                self.seen.add(key)
                self.en.append(en)
                self.x.append(x)
                self.line.append(line)
                self.src.append(src_i)
        batch.clear()


def _read_filtered(cfg: CorpusConfig, progress: bool) -> _Kept:
    kept = _Kept(cfg)
    for src_i, (label, pairs) in enumerate(_sources(cfg, progress)):
        kept.sources.append(label)
        for line, en, x in tqdm(pairs, desc=f"read {label}", unit=" pairs", disable=not progress):
            kept.add(src_i, line, en, x)
        kept.flush()
    return kept


def _shuffled(cfg: CorpusConfig, kept: _Kept) -> tuple[pa.Table, dict]:
    """The kept pairs shuffled by the corpus seed and pruned to max_pairs, as a table, and its meta.json."""
    order = np.random.default_rng(cfg.seed).permutation(len(kept.en))
    pruned = max(0, len(order) - cfg.max_pairs)
    order = order[: cfg.max_pairs]
    en = [kept.en[i] for i in order]
    x = [kept.x[i] for i in order]
    table = pa.table({
        "pair_id": pa.array(np.arange(len(order), dtype=np.int64)),
        "source": pa.array(np.asarray(kept.src, dtype=np.int32)[order]),
        "source_line": pa.array(np.asarray(kept.line, dtype=np.int64)[order]),
        "en": pa.array(en, pa.string()),
        "x": pa.array(x, pa.string()),
    })
    meta = {
        "format_version": CORPUS_FORMAT_VERSION,
        "name": cfg.out_name,
        "pair": cfg.pair,
        "lang": parse_pair(cfg.pair),
        "n_pairs": len(order),
        "read": kept.total,
        "dropped": {**kept.dropped, "pruned": pruned},
        "sources": kept.sources,
        "length_unit": cfg.length_tokenizer or f"words:{WORD_RULE_VERSION}",
        "fingerprint": fingerprint_rows(en, x),
        "config": dataclasses.asdict(cfg),
        "mmkd_version": __version__,
    }
    return table, meta


def _publish_corpus(table: pa.Table, meta: dict, out: Path) -> None:
    """pairs.arrow and meta.json written beside `out`, then renamed into place (an older corpus mmkd
    wrote there, which _output_folder allowed, replaced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))   # hidden: never listed
    try:
        with pa.OSFile(str(tmp / "pairs.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        if out.exists():   # checked above: a prepared corpus with only mmkd's files, --overwrite given
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "corpus")
            publish(tmp, out)
            shutil.rmtree(old)
        else:
            publish(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusError(f"{e.filename or out}: cannot write the corpus ({e.strerror}); "
                          "free some space or choose another --data-dir") from None


@dataclass
class PreparedCorpus:
    path: Path
    meta: dict
    table: pa.Table

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def pair(self) -> str:
        return self.meta["pair"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def __len__(self) -> int:
        return self.table.num_rows

    def __getstate__(self):
        # Sent to data-loader workers as a path: each re-maps the file instead of copying it.
        return {"path": str(self.path)}

    def __setstate__(self, state):
        other = open_corpus(state["path"])
        self.path, self.meta, self.table = other.path, other.meta, other.table

    def rows(self, pair_ids: np.ndarray) -> tuple[list[str], list[str]]:
        """English and other-language text of the given pair ids (pair id == row)."""
        sub = self.table.take(pa.array(np.asarray(pair_ids, dtype=np.int64)))
        return sub.column("en").to_pylist(), sub.column("x").to_pylist()


def list_corpora(data_dir: str) -> list[str]:
    root = Path(data_dir) / "corpora"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())


def open_corpus(name_or_path: str, data_dir: str | None = None) -> PreparedCorpus:
    """A prepared corpus by name (looked up in `<data_dir>/corpora/`) or by path."""
    data_dir = data_dir or default_data_dir()
    path = Path(name_or_path)
    if not (path / "meta.json").is_file():
        path = Path(data_dir) / "corpora" / name_or_path
    if not (path / "meta.json").is_file():
        have = list_corpora(data_dir)
        listing = ", ".join(have) if have else "none"
        raise CorpusError(
            f"no prepared corpus {name_or_path!r} (looked for {name_or_path}/meta.json and "
            f"{Path(data_dir) / 'corpora' / name_or_path}/meta.json). Available in {data_dir}: {listing}. "
            f"Make it with: mmkd corpus prepare {name_or_path if '-' in name_or_path else 'en-XX'} "
            f"--data-dir {data_dir} [--moses EN_FILE X_FILE | --tsv FILE | --zip FILE | --hf-dataset NAME]")
    where = path / "meta.json"
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{where}: not a prepared corpus's meta.json ({str(e).splitlines()[0][:120]}); "
                          "prepare the corpus again") from None
    if not isinstance(meta, dict) or meta.get("format_version") != CORPUS_FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CorpusError(f"{where}: corpus format version {version!r}, "
                          f"this mmkd reads version {CORPUS_FORMAT_VERSION}; prepare it again")
    for key, kind in (("name", str), ("pair", str), ("fingerprint", str), ("n_pairs", int)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CorpusError(f"{where}: {key} is {meta.get(key)!r}, not a {kind.__name__}; prepare the corpus again")
    check_name(meta["name"], f"{where}: name")     # it names the cache folder: one path component only
    parse_pair(meta["pair"])
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path / "pairs.arrow"))).read_all()
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path / 'pairs.arrow'}: unreadable ({str(e).splitlines()[0][:120]}); the corpus is "
                          "damaged: prepare it again (--overwrite)") from None
    if table.num_rows != meta["n_pairs"] or not {"en", "x"} <= set(table.column_names):
        raise CorpusError(f"{path / 'pairs.arrow'}: {table.num_rows} rows, meta.json says {meta['n_pairs']}; the "
                          "corpus is damaged: prepare it again (--overwrite)")
    return PreparedCorpus(path=path, meta=meta, table=table)
