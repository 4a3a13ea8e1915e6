"""Reading English–X parallel text from the places users keep it.

Every reader yields `(line_no, en, x)` with 1-based line numbers so that errors and the prepared
corpus can point back at the source. Supported: OPUS Moses files (two line-aligned files, or the
zip OPUS serves), TSV (`en<TAB>x`), a Hugging Face dataset with a `translation` column, and the
built-in table of the paper's OPUS corpora (section 4.1) for users with internet.
"""

from __future__ import annotations

import gzip
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator

import fsspec

from mmkd.atomic import publish
from mmkd.console import is_verbose
from mmkd.download import DownloadError, download
from mmkd.errors import CorpusError, MMKDError
from mmkd.hub_data import HUB_CORPORA, HubCorpus

# The OPUS object store; MMKD_OPUS_BASE_URL (or opus_base_url) points at a mirror instead.
OPUS_BASE_URL = "https://object.pouta.csc.fi"

# The paper's seven pairs (section 4.1): corpus, OPUS release. The zip for a pair is
# {base}/OPUS-{corpus}/{release}/moses/{a}-{b}.txt.zip with a, b in alphabetical order.
PAPER_PAIRS: dict[str, list[tuple[str, str]]] = {
    "en-ar": [("MultiUN", "v1")],
    "en-bg": [("EUbookshop", "v2"), ("Europarl", "v8")],
    "en-de": [("Europarl", "v8")],
    "en-es": [("Europarl", "v8")],
    "en-fr": [("Europarl", "v8")],
    "en-hi": [("IITB", "v2.0")],
    "en-zh": [("MultiUN", "v1")],
}

Pair = tuple[int, str, str]


@dataclass(frozen=True)
class OpusRef:
    corpus: str
    release: str
    lang: str

    @property
    def moses_pair(self) -> str:
        return "-".join(sorted(["en", self.lang]))

    def url(self, base: str = OPUS_BASE_URL) -> str:
        return f"{base.rstrip('/')}/OPUS-{self.corpus}/{self.release}/moses/{self.moses_pair}.txt.zip"

    def member(self, lang: str) -> str:
        """Name of one side inside the zip, e.g. `Europarl.de-en.de`."""
        return f"{self.corpus}.{self.moses_pair}.{lang}"


def parse_pair(pair: str) -> str:
    """`en-fr` -> `fr`. English is always the source side."""
    parts = pair.split("-")
    # A language code (ISO 639, with an optional script or region: zh_Hans, es_LA): it names folders.
    if len(parts) != 2 or parts[0] != "en" or not re.fullmatch(r"[A-Za-z]{2,3}(_[A-Za-z0-9]{2,8})?", parts[1]):
        raise CorpusError(f"language pair {pair!r} must look like 'en-XX' (English first), e.g. en-fr")
    return parts[1]


def opus_refs(pair: str) -> list[OpusRef]:
    lang = parse_pair(pair)
    if pair not in PAPER_PAIRS:
        known = ", ".join(sorted(PAPER_PAIRS))
        raise CorpusError(f"no built-in OPUS source for {pair!r}; built-in pairs: {known}. "
                          "Give --moses/--tsv/--zip/--hf-dataset to use other data.")
    return [OpusRef(c, r, lang) for c, r in PAPER_PAIRS[pair]]


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"


def check_encoding(opener, name: str) -> None:
    """UTF-16 text (with or without a byte-order mark) would be miscounted and misread as UTF-8:
    refuse it up front, naming the file."""
    with opener() as f:
        head = f.read(4096)
    if head.startswith(_UTF16_BOMS) or b"\x00" in head:
        raise CorpusError(f"{name}: UTF-16 (or binary) data, not UTF-8 text; convert it first, e.g. "
                          f"iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8")


def _decode_lines(raw: Iterator[bytes], name: str, max_chars: int) -> Iterator[tuple[int, str]]:
    for i, line in enumerate(raw, start=1):
        if i == 1 and line.startswith(_UTF8_BOM):   # a UTF-8 byte-order mark is not part of the text
            line = line[len(_UTF8_BOM):]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"{name} line {i}: invalid UTF-8 at byte {e.start} ({e.reason})") from None
        text = text.rstrip("\r\n")
        if "\x00" in text:
            raise CorpusError(f"{name} line {i}: a NUL byte; this is binary (or UTF-16) data, not UTF-8 text")
        if len(text) > max_chars:
            raise CorpusError(f"{name} line {i}: {len(text)} characters, over the limit of {max_chars} "
                              "(max_line_chars); is this really a sentence-per-line file?")
        yield i, text


def _count_lines(opener) -> int:
    with opener() as f:
        n = sum(1 for _ in f)
    return n


def _zip_side(pairs: Iterator[tuple[tuple[int, str], tuple[int, str]]]) -> Iterator[Pair]:
    for (i, en), (_, x) in pairs:
        yield i, en, x


def read_moses_streams(open_en, open_x, name_en: str, name_x: str, max_chars: int) -> Iterator[Pair]:
    """Two line-aligned text streams. The line counts are checked before anything is yielded."""
    check_encoding(open_en, name_en)
    check_encoding(open_x, name_x)
    n_en, n_x = _count_lines(open_en), _count_lines(open_x)
    if n_en == 0:
        raise CorpusError(f"{name_en}: the file is empty")
    if n_x == 0:
        raise CorpusError(f"{name_x}: the file is empty")
    if n_en != n_x:
        raise CorpusError(f"{name_en} has {n_en} lines but {name_x} has {n_x}: the two sides of a "
                          "Moses corpus must be line-aligned")
    with open_en() as fe, open_x() as fx:
        yield from _zip_side(zip(_decode_lines(fe, name_en, max_chars), _decode_lines(fx, name_x, max_chars)))


def _local_opener(path: str):
    if not os.path.exists(path):
        raise CorpusError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CorpusError(f"{path}: is a folder; give the file itself")
    if path.endswith(".gz"):
        return lambda: gzip.open(path, "rb")
    return lambda: open(path, "rb")


def read_moses(en_path: str, x_path: str, max_chars: int) -> Iterator[Pair]:
    """Two line-aligned files (plain or .gz)."""
    return _guard_gzip(read_moses_streams(_local_opener(en_path), _local_opener(x_path), en_path, x_path,
                                          max_chars), en_path, x_path)


def read_tsv(path: str, max_chars: int) -> Iterator[Pair]:
    """`en<TAB>x` per line, no header (plain or .gz)."""
    return _guard_gzip(_read_tsv(path, max_chars), path)


def _read_tsv(path: str, max_chars: int) -> Iterator[Pair]:
    opener = _local_opener(path)
    check_encoding(opener, path)
    with opener() as f:
        lines = _decode_lines(f, path, max_chars)
        n = 0
        for i, text in lines:
            n += 1
            if not text.strip():
                yield i, "", ""
                continue
            cols = text.split("\t")
            if len(cols) != 2:
                raise CorpusError(f"{path} line {i}: expected 2 tab-separated columns (en, x), found {len(cols)}")
            yield i, cols[0], cols[1]
    if n == 0:
        raise CorpusError(f"{path}: the file is empty")


def read_opus_zip(path: str, ref: OpusRef, max_chars: int) -> Iterator[Pair]:
    """The Moses zip OPUS serves: members `{Corpus}.{a-b}.{a}` and `{Corpus}.{a-b}.{b}`.

    `path` is a local file or any fsspec URL."""
    if os.path.isdir(path):
        raise CorpusError(f"{path}: is a folder; give the zip file itself")
    try:
        zf = zipfile.ZipFile(path) if os.path.exists(path) else zipfile.ZipFile(fsspec.open(path, "rb").open())
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except zipfile.BadZipFile as e:
        raise CorpusError(f"{path}: not a readable zip file ({e}); the download may be truncated") from None
    names = zf.namelist()
    en_name, x_name = ref.member("en"), ref.member(ref.lang)
    # Accept any corpus prefix when the user's zip is named differently (e.g. renamed releases).
    if en_name not in names or x_name not in names:
        suffix_en, suffix_x = f".{ref.moses_pair}.en", f".{ref.moses_pair}.{ref.lang}"
        cands_en = [n for n in names if n.endswith(suffix_en)]
        cands_x = [n for n in names if n.endswith(suffix_x)]
        if len(cands_en) != 1 or len(cands_x) != 1:
            raise CorpusError(f"{path}: expected members {en_name} and {x_name}; the zip holds {names}")
        en_name, x_name = cands_en[0], cands_x[0]

    def opener(member):
        return lambda: zf.open(member)

    try:
        yield from read_moses_streams(opener(en_name), opener(x_name), f"{path}:{en_name}",
                                      f"{path}:{x_name}", max_chars)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CorpusError(f"{path}: corrupt or truncated zip data ({e}); delete {path} and run the command again "
                          "(a download is fetched anew)") from None


def _guard_gzip(pairs: Iterator[Pair], *paths: str) -> Iterator[Pair]:
    try:
        yield from pairs
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorpusError(f"{' / '.join(paths)}: corrupt or truncated gzip data ({e})") from None


def _check_zip(url: str):
    def check(path: str) -> None:
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()          # every member read through: its CRC, not just the directory
            if bad is not None:
                raise DownloadError(f"{url}: member {bad} of the downloaded zip fails its CRC (a corrupt or "
                                    "mixed download); it was deleted: run the command again")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            with open(path, "rb") as f:
                head = f.read(64)
            what = "an HTML page" if head.lstrip().lower().startswith((b"<!doctype", b"<html")) else "not a zip file"
            raise DownloadError(f"{url}: the server sent {what} ({e}); check the URL (and opus_base_url), "
                                "then run the command again") from None
    return check


def fetch(url: str, dest: str, progress: bool = True, desc: str | None = None) -> str:
    """A remote zip into `dest`: HTTP(S) through `mmkd.download` (resume, retries, size and zip
    checks, atomic rename); any other fsspec URL (file://, s3://, ...) copied aside and renamed."""
    if os.path.isfile(dest):
        return dest
    if url.split("://", 1)[0].lower() in ("http", "https"):
        return download(url, dest, check=_check_zip(url), progress=progress, desc=desc)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".part"
    try:
        with fsspec.open(url, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except FileNotFoundError:
        raise CorpusError(f"{url}: not found; check the URL (and opus_base_url)") from None
    try:
        _check_zip(url)(tmp)
    except MMKDError:
        os.remove(tmp)
        raise
    publish(tmp, dest)
    return dest


def download_opus(ref: OpusRef, download_dir: str, base_url: str = OPUS_BASE_URL, progress: bool = True) -> str:
    """The OPUS Moses zip of `ref` in `download_dir` (fetched once, then reused)."""
    dest = os.path.join(download_dir, f"{ref.corpus}-{ref.release}-{ref.moses_pair}.txt.zip")
    return fetch(ref.url(base_url), dest, progress, desc=f"download {ref.corpus} {ref.moses_pair}")


def hub_corpora(pair: str) -> list[HubCorpus]:
    """The hub's parquet mirrors of the paper's corpus for `pair`, at their pinned commits."""
    parse_pair(pair)
    if pair not in HUB_CORPORA:
        raise CorpusError(f"no hub mirror of a paper corpus for {pair!r}; pairs with one: {', '.join(sorted(HUB_CORPORA))}. "
                          "Give --hf-dataset NAME (and hf_config) to read another dataset.")
    return HUB_CORPORA[pair]


def read_hf(name: str, config: str | None, split: str, lang: str, max_chars: int,
            columns: str | None = None, revision: str | None = None) -> Iterator[Pair]:
    """A Hugging Face dataset (hub name or local folder) whose rows hold
    `translation: {"en": ..., lang: ...}` (the layout of opus_books, wmt*, europarl_bilingual, ...),
    or, with `columns="EN,X"`, two text columns (sentence-transformers' parallel-sentences-*:
    `english,non_english`)."""
    import datasets   # lazy: 1.1 s to import; only a Hugging Face corpus needs it


    if not is_verbose():
        datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(name, config, split=split, revision=revision)
    except FileNotFoundError as e:
        raise CorpusError(f"dataset {name!r} (config {config!r}): not found ({e})") from None
    except Exception as e:   # datasets raises many kinds (a folder of TSVs, a missing split, a bad config)
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CorpusError(f"--hf-dataset {name!r} (config {config!r}, split {split!r}): not a dataset with a "
                          f"'translation' column that `datasets` can load ({type(e).__name__}: {first}); for "
                          "TSV files use --tsv") from None
    if columns:
        yield from _two_columns(ds, name, columns, max_chars)
        return
    if "translation" not in ds.column_names:
        raise CorpusError(f"--hf-dataset {name!r}: no 'translation' column (columns: {ds.column_names[:4]}); a dataset "
                          "with rows {'translation': {'en': ..., 'xx': ...}} is needed; for TSV files use --tsv")
    for i, row in enumerate(ds, start=1):
        tr = row["translation"]
        if "en" not in tr or lang not in tr:
            raise CorpusError(f"dataset {name!r} row {i}: translation has keys {sorted(tr)}, need 'en' and {lang!r}")
        en, x = tr["en"] or "", tr[lang] or ""
        for side in (en, x):
            if len(side) > max_chars:
                raise CorpusError(f"dataset {name!r} row {i}: {len(side)} characters, over max_line_chars={max_chars}")
        yield i, en, x


def _two_columns(ds, name: str, columns: str, max_chars: int) -> Iterator[Pair]:
    picked = [c.strip() for c in columns.split(",")]
    if len(picked) != 2 or not all(picked):
        raise CorpusError(f"hf_columns={columns!r}: give two column names, English first (e.g. english,non_english)")
    missing = [c for c in picked if c not in ds.column_names]
    if missing:
        raise CorpusError(f"--hf-dataset {name!r}: no column {missing[0]!r} (columns: {', '.join(ds.column_names[:8])})")
    for i, row in enumerate(ds, start=1):
        en, x = row[picked[0]], row[picked[1]]
        for side, column in ((en, picked[0]), (x, picked[1])):
            if side is not None and not isinstance(side, str):
                raise CorpusError(f"dataset {name!r} row {i}: column {column!r} holds {type(side).__name__}, not text")
            if side and len(side) > max_chars:
                raise CorpusError(f"dataset {name!r} row {i}: {len(side)} characters, over max_line_chars={max_chars}")
        yield i, en or "", x or ""


__all__ = ["OPUS_BASE_URL", "PAPER_PAIRS", "OpusRef", "parse_pair", "opus_refs", "hub_corpora", "read_moses",
           "read_tsv", "read_opus_zip", "download_opus", "fetch", "read_hf"]
