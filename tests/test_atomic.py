"""Publishing (mmkd/atomic.py): every rename that makes a result visible is fsynced before and its folder
after."""

from __future__ import annotations

import os

import pytest

from mmkd.cache import CacheConfig, build_cache
from mmkd.trainer import train

from helpers import short_run


class FsyncAudit:
    """Stands in for os.fsync and os.replace: every rename that publishes (its source is a `*.tmp*`
    or `*.part` file or folder) must come after an fsync of each file under its source, and be
    followed by an fsync of the folder it renamed into."""

    def __init__(self, monkeypatch):
        self.synced: list[str] = []
        self.renames: list[tuple[int, str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.synced.append(os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            src, dst = os.path.realpath(src), os.path.realpath(dst)
            name = os.path.basename(src)
            if ".tmp" in name or name.endswith(".part"):
                files = [os.path.join(t, f) for t, _, fs in os.walk(src) for f in fs] if os.path.isdir(src) else [src]
                unsynced = [f for f in files if f not in self.synced]
                assert not unsynced, f"{src} renamed to {dst} before its files were fsynced: {unsynced[:3]}"
                self.renames.append((len(self.synced), src, dst))
            return real_replace(src, dst, **kw)

        def rename(src, dst, **kw):
            raise AssertionError(f"os.rename({src}, {dst}): mmkd publishes with mmkd.atomic.publish only")
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)

    def check(self, *must: str) -> None:
        for at, src, dst in self.renames:
            assert os.path.dirname(dst) in self.synced[at:], f"{dst}: its folder was not fsynced after the rename"
        published = [os.path.basename(dst) for _, _, dst in self.renames]
        for name in must:
            assert name in published, (name, published)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads fsync'd paths from /proc")
def test_every_publishing_rename_is_fsynced_before_and_its_folder_after(tmp_path, shared, tiny_teacher, tiny_student,
                                                                         monkeypatch):
    import mmkd.eval.runner as runner
    from mmkd.corpus import CorpusConfig, prepare_corpus

    audit = FsyncAudit(monkeypatch)
    data = tmp_path / "data"
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(data), max_pairs=120, min_tokens=3,
                                tsv=str(shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv")), progress=False)
    build_cache(CacheConfig(corpora=["en-fr"], teacher=tiny_teacher, out=str(tmp_path / "cache"), data_dir=str(data),
                            shard_size=64), progress=False)
    run = train(short_run(tmp_path, tmp_path / "cache" / "en-fr", tiny_student, data), progress=False)
    import mmkd.supply as supply

    def build(files, dest, bar):
        (dest / "model.safetensors").write_bytes(b"weights")
        return {}
    monkeypatch.setattr(supply, "_supplies", lambda: {"fake": supply.Supply("fake", "org/fake", "MIT", (), build, 1, "")})
    monkeypatch.setenv("MMKD_MODELS_DIR", str(tmp_path / "models"))
    supply.model_folder("fake", progress=False)
    monkeypatch.setattr(runner, "markdown_table", lambda result: "| table |")
    runner.write_result({"task": "retrieval", "model": str(run / "student"), "sets": {"en-fr": {"cls": 1.0, "mean": 2.0}},
                         "average": {"cls": 1.0, "mean": 2.0}},
                        tmp_path / "eval")
    audit.check("en-fr", "00000", "00001", "build.json", "manifest.json", "summary.json", "step-0000001",
                "step-0000002", "latest", "config.json", "student", "heads.safetensors", "results.json",
                "eval_summary.json", "README.md", "fake", ".mmkd-verified.json")
    assert (run / "student" / "config.json").is_file()
