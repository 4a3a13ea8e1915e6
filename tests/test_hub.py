"""The hub, end to end, against a hub the test starts on 127.0.0.1 (tests/hubserver.py, HF_ENDPOINT):
a paper corpus read from its parquet mirror at the pinned commit, zero-shot XNLI read from
facebook/xnli at one resolved commit (recorded in results.json), and `mmkd push` of the trained
student, whose card huggingface_hub parses back with its model-index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hubserver import TOKEN, hub_server
from mmkd.hub_data import EUROPARL, HUB_CORPORA
from mmkd.objectives import HeadSettings

LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def _parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _europarl(folder: Path, shared: Path, rows: slice) -> Path:
    """Helsinki-NLP/europarl as the hub lays it out: PAIR/train-0000N-of-0000M.parquet, rows
    {"translation": {"en": ..., "fr": ...}}, the configs in the card."""
    par = shared / "parallel" / "europarl_v7_fr-en"
    en = (par / "europarl-v7.fr-en.en").read_text(encoding="utf-8").splitlines()[rows]
    fr = (par / "europarl-v7.fr-en.fr").read_text(encoding="utf-8").splitlines()[rows]
    _parquet(folder / "en-fr" / "train-00000-of-00001.parquet",
             pa.table({"translation": [{"en": a, "fr": b} for a, b in zip(en, fr)]}))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: en-fr\n  data_files:\n  - split: train\n"
                                      "    path: en-fr/train-*\n---\n# Europarl\n", encoding="utf-8")
    return folder


def _xnli(folder: Path, shared: Path, n: int) -> Path:
    """facebook/xnli as the hub lays it out: LANG/{train,validation,test}-00000-of-00001.parquet with
    premise, hypothesis and an integer label."""
    def table(name: str, limit: int) -> pa.Table:
        rows = [line.split("\t") for line in (shared / "xnli" / name).read_text(encoding="utf-8").splitlines()[:limit]]
        return pa.table({"premise": [r[0] for r in rows], "hypothesis": [r[1] for r in rows],
                         "label": pa.array([LABELS[r[2]] for r in rows], pa.int64())})
    _parquet(folder / "en" / "train-00000-of-00001.parquet", table("dev-en.tsv", n))
    _parquet(folder / "en" / "validation-00000-of-00001.parquet", table("test-en.tsv", 24))
    _parquet(folder / "fr" / "validation-00000-of-00001.parquet", table("dev-fr.tsv", 24))
    _parquet(folder / "fr" / "test-00000-of-00001.parquet", table("test-fr.tsv", 30))
    configs = "".join(f"- config_name: {lang}\n  data_files:\n" + "".join(
        f"  - split: {split}\n    path: {lang}/{split}-*\n" for split in splits)
        for lang, splits in (("en", ("train", "validation")), ("fr", ("validation", "test"))))
    (folder / "README.md").write_text(f"---\nconfigs:\n{configs}---\n# XNLI\n", encoding="utf-8")
    return folder


def _env(hub, tmp_path: Path, token: str | None = TOKEN) -> dict:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1"}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return env


def _mmkd(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmkd", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_corpus_eval_and_push_through_a_hub_on_localhost(tmp_path, shared, tiny_teacher, tiny_student):
    from mmkd import CacheConfig, TrainConfig, build_cache, train
    from mmkd.corpus import open_corpus

    with hub_server() as hub:
        # The mirror at the commit mmkd pins, then main moves on to other rows: the pinned ones are read.
        pinned = hub.seed("dataset", "Helsinki-NLP/europarl", _europarl(tmp_path / "ep1", shared, slice(0, 400)),
                          sha=EUROPARL)
        hub.seed("dataset", "Helsinki-NLP/europarl", _europarl(tmp_path / "ep2", shared, slice(2000, 2100)))
        assert HUB_CORPORA["en-fr"][0].revision == pinned
        xnli_commit = hub.seed("dataset", "facebook/xnli", _xnli(tmp_path / "xnli", shared, 64))
        env = _env(hub, tmp_path)

        data = tmp_path / "data"
        r = _mmkd(["corpus", "prepare", "en-fr", "--source", "hub", "--data-dir", str(data), "--min-tokens", "1",
                   "--quiet"], env, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        corpus = open_corpus(str(data / "corpora" / "en-fr"))
        assert corpus.meta["sources"] == [f"hub:Helsinki-NLP/europarl/en-fr@{EUROPARL}"]
        first = set((shared / "parallel/europarl_v7_fr-en/europarl-v7.fr-en.en").read_text().splitlines()[:400])
        assert set(corpus.table.column("en").to_pylist()) <= first and len(corpus) > 200
        reads = [p for m, p in hub.requests if "/datasets/Helsinki-NLP/europarl/resolve/" in p]
        assert reads and all(f"/resolve/{EUROPARL}/" in p for p in reads), reads

        build_cache(CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=str(tmp_path / "cache"),
                                data_dir=str(data)), progress=False)
        run = train(TrainConfig(cache=[str(tmp_path / "cache")], student=tiny_student, out=str(tmp_path / "run"),
                                max_steps=2, batch_size=8, heads=HeadSettings(hidden=32, out=16), num_workers=0,
                                log_with="none"), progress=False)
        student = Path(run) / "student"

        # XNLI from facebook/xnli: "main" is resolved once, every read names that commit.
        r = _mmkd(["eval", "xnli", "--model", str(student), "--languages", "fr", "--seeds", "1", "--epochs", "1",
                   "--batch-size", "16", "--out", str(tmp_path / "xnli")], env, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        result = json.loads((tmp_path / "xnli" / "results.json").read_text())
        assert result["data"]["hub"] == {"test": {"id": "facebook/xnli", "revision": "main", "commit": xnli_commit}}
        reads = [p for m, p in hub.requests if "/datasets/facebook/xnli/resolve/" in p]
        assert reads and all(f"/resolve/{xnli_commit}/" in p for p in reads), reads
        predicted = (tmp_path / "xnli" / result["runs"][0]["predictions"] / "test-fr.tsv").read_text().splitlines()
        assert len(predicted) == 30           # every test row of the hub's fr split, in XTREME's layout
        summary = json.loads((student / "eval_summary.json").read_text())["xnli"]
        assert summary["hub_dataset"]["commit"] == xnli_commit

        # A dry run contacts nothing and shows the card.
        before = len(hub.requests)
        r = _mmkd(["push", str(student), "mmkd-test/tiny-student", "--dry-run", "--license", "mit"], env, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "model-index:" in r.stdout and "files (" in r.stdout and len(hub.requests) == before

        # Without a token the hub refuses, in one line.
        r = _mmkd(["push", str(student), "mmkd-test/tiny-student"], _env(hub, tmp_path, token=None), tmp_path)
        assert r.returncode == 2 and "hub refused the token (401)" in r.stderr, r.stderr[-2000:]
        assert r.stderr.strip().count("\n") == 0

        r = _mmkd(["push", str(student), "mmkd-test/tiny-student", "--license", "mit"], env, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "pushed" in r.stdout and "/mmkd-test/tiny-student/commit/" in r.stdout
        held = hub.files("model", "mmkd-test/tiny-student")
        listed = json.loads((student / "mmkd_run.json").read_text())["files"]
        assert set(held) == set(listed) | {"eval_summary.json"}
        assert held["model.safetensors"] == (student / "model.safetensors").read_bytes()
        assert (student / "README.md").read_text() != held["README.md"].decode()      # the folder is not changed
        assert hub.validated and "model-index" in hub.validated[-1]       # the hub's metadata check passed

        sub = subprocess.run([sys.executable, "-c", (
            "import json; from huggingface_hub import ModelCard; d = ModelCard.load('mmkd-test/tiny-student').data; "
            "print(json.dumps({'license': d.license, 'language': d.language, 'datasets': d.datasets, 'tags': d.tags, "
            "'results': [[e.task_type, e.dataset_type, e.dataset_config, e.dataset_split, e.dataset_revision, "
            "e.metric_type, e.metric_value] for e in d.eval_results]}))")], env=env, capture_output=True, text=True,
            timeout=300)
        assert sub.returncode == 0, sub.stderr[-2000:]
        card = json.loads(sub.stdout)
        assert card["license"] == "mit" and card["language"] == ["en", "fr"]
        assert card["datasets"] == ["Helsinki-NLP/europarl", "facebook/xnli"]
        assert "mmkd" in card["tags"]
        fr = round(result["summary"]["fr"]["mean"], 2)
        assert card["results"] == [["text-classification", "facebook/xnli", "fr", "test", xnli_commit, "accuracy", fr]]


def test_push_refuses_a_folder_that_is_not_a_whole_student_before_sending_anything(tmp_path):
    from mmkd.push import PushError, build

    with pytest.raises(PushError, match="not a student saved by `mmkd train`"):
        build(tmp_path, "org/name")
    (tmp_path / "mmkd_run.json").write_text(json.dumps({"files": ["config.json", "model.safetensors",
                                                                  "mmkd_run.json"]}))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PushError, match=r"model.safetensors is missing \(1 of the 3 files"):
        build(tmp_path, "org/name")
    from mmkd.push import push

    with pytest.raises(PushError, match="not a hub repo id"):
        push(tmp_path, "no-namespace")


def test_an_unknown_revision_is_one_line_before_any_fine_tuning(tmp_path, shared, tiny_student):
    with hub_server() as hub:
        hub.seed("dataset", "facebook/xnli", _xnli(tmp_path / "xnli", shared, 16))
        r = _mmkd(["eval", "xnli", "--model", tiny_student, "--languages", "fr", "--hub-revision", "v9",
                   "--out", str(tmp_path / "out")], _env(hub, tmp_path), tmp_path)
        assert r.returncode == 2 and "dataset facebook/xnli: no revision 'v9' on the hub" in r.stderr, r.stderr[-2000:]
        assert not (tmp_path / "out").exists()
