"""What several test files share: short runs' settings and command lines, one-line error checks, cache
copies and the older cache formats made from a current cache."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import fsspec
import pyarrow as pa
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mmkd import settings as st
from mmkd.cache import CacheConfig, build_cache
from mmkd.cache.format import dumps, sha256_file
from mmkd.features import open_features
from mmkd.model import build_model
from mmkd.objectives import HeadSettings
from mmkd.schedule import BalancedSchedule
from mmkd.step_data import StepData
from mmkd.trainer import TrainConfig



def build(tmp_path: Path, teacher: str, data_dir: Path, corpora=("en-fr",), resume=False, **kw) -> Path:
    cfg = CacheConfig(corpora=list(corpora), teacher=teacher, out=str(tmp_path / kw.pop("name", "cache")),
                      data_dir=str(data_dir), **{"shard_size": 64, "batch_size": 16, **kw})
    build_cache(cfg, progress=False, resume=resume)
    return Path(cfg.out)


def losses(run: Path) -> list[tuple[str, ...]]:
    """A run's losses per step, as metrics.csv wrote them (text: compared exactly)."""
    with open(run / "metrics.csv") as f:
        return [tuple(r[k] for k in ("loss", "tlm", "xwcl", "senta", "struca")) for r in csv.DictReader(f)]


def cached_run(tmp_path, cache, student, name, **kw) -> TrainConfig:
    """Three steps of 6 pairs from a cache alone (its data_dir does not exist), in tmp_path/name."""
    return TrainConfig(cache=[str(cache)], student=student, out=str(tmp_path / name), batch_size=6, max_steps=3,
                       lr=1e-3, checkpoint_every=100, num_workers=0, log_with="none", heads=HeadSettings(hidden=32, out=16),
                       data_dir=str(tmp_path / "no-such-data-dir"), **kw)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def one_line_error(r, *fragments):
    """A usage error (exit 2): one line starting `error: `, holding each fragment."""
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    for fragment in fragments:
        assert fragment in r.output, r.output


def short_run(tmp_path, cache, student, data_dir, **kw) -> TrainConfig:
    """Two steps of 8 pairs with a checkpoint after each, tiny heads; `kw` replaces settings."""
    base = dict(cache=[str(cache)], student=student, out=str(tmp_path / "run"), data_dir=str(data_dir), batch_size=8,
                max_steps=2, lr=1e-3, warmup_ratio=0.0, checkpoint_every=1, num_workers=0, log_with="none",
                heads=HeadSettings(hidden=32, out=16))
    base.update(kw)
    return TrainConfig(**base)


def one_line(r, *fragments):
    """A refusal (exit 1 or 2): one line, no traceback, holding each fragment."""
    assert r.exit_code in (1, 2), r.output
    text = r.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and text.startswith(("error: ", "FAIL ")), text
    for fragment in fragments:
        assert fragment in text, text


def fresh(cache: Path, tmp_path: Path) -> Path:
    """A copy of the shared cache this test may damage."""
    return copy_cache(cache, tmp_path)


def train_args(cache, student, out, data_dir, *extra):
    """`mmkd train` for two steps of 8 pairs, a checkpoint after each, tiny heads; `extra` after."""
    return ["train", "--cache", str(cache), "--student", student, "--out", str(out), "--data-dir", str(data_dir),
            "--batch-size", "8", "--max-steps", "2", "--head-hidden", "32", "--head-out", "16", "--num-workers", "0",
            "--log-with", "none", "--checkpoint-every", "1", "--quiet", *extra]


def folder_snapshot(folder: Path) -> dict:
    """Every path under `folder` with its bytes and mtime (links not followed): to show nothing changed."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None,
                                         p.stat().st_mtime_ns if not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


def small_config(tmp_path, cache_root, student, data_dir, **kw) -> TrainConfig:
    """A small run's settings; `kw` by setting name (`alpha`, `xwcl_temperature` or `xwcl.temperature`)."""
    base = dict(cache=[str(cache_root)], student=student, out=str(tmp_path / "run"), data_dir=str(data_dir),
                batch_size=8, max_steps=4, lr=1e-3, warmup_ratio=0.0, checkpoint_every=1000, num_workers=0,
                log_with="none", head_hidden=32, head_out=16)
    base.update(kw)
    return st.from_mapping(TrainConfig, base, "test")


def small_settings(**kw) -> TrainConfig:
    """The default settings with the tiny models' head sizes; `kw` by setting name."""
    return st.from_mapping(TrainConfig, {"head_hidden": 32, "head_out": 16, **kw}, "test")


def changed(cfg: TrainConfig, **kw) -> TrainConfig:
    """`cfg` with the settings `kw` (by name, as `config` takes them) replaced."""
    return st.from_mapping(TrainConfig, kw, "test", base=cfg)


def tiny_model(student: str, teacher_hidden: int = 32, **kw):
    """The MMKD network on `student` for a teacher of width `teacher_hidden`."""
    return build_model(AutoModelForMaskedLM.from_pretrained(student), teacher_hidden, small_settings(**kw))[0]


def metrics(run: Path) -> list[dict]:
    """A run's metrics.csv rows."""
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def losses_of_step(cfg: TrainConfig, model, step: int = 0) -> dict[str, float]:
    """Each objective's loss on step `step`'s batch of `cfg`'s data, one process."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.student)
    features = open_features(cfg)
    data = StepData(features, BalancedSchedule(features.sizes, cfg.batch_size, cfg.seed), 0, 1, cfg, tokenizer)
    (batch,) = [data.build(part) for part in data.plan(step)]
    out = model(batch, cfg.objectives)
    return {o: model.terms[o].loss(out, lambda t: t).item() for o in cfg.objectives}


def copy_cache(clean: Path, tmp_path: Path) -> Path:
    """A copy of the shared clean cache (without its verification markers) that a test may damage."""
    dest = tmp_path / "cache"
    shutil.copytree(clean, dest, ignore=shutil.ignore_patterns("verified"))
    return dest


def make_format_1(cache: Path) -> None:
    """What mmkd 0.1 wrote: no text in meta.arrow, the corpus path in the manifest."""
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
