"""The benchmarks stand alone (they import mmkd, never each other or the tests), and the GPU check
runs at tiny shapes on the CPU so that it is ready the day a GPU is lent."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_benchmarks_import_only_mmkd_and_nothing_imports_a_benchmark():
    own = {p.stem for p in BENCHMARKS} | {"tiny", "conftest", "families", "loopback", "tests", "benchmarks"}
    for path in BENCHMARKS:
        assert not _imports(path) & own, (path.name, _imports(path) & own)
        assert "sys.path" not in path.read_text(), path.name
    for path in [*REPO.glob("mmkd/**/*.py"), *REPO.glob("tests/*.py")]:
        assert not _imports(path) & ({p.stem for p in BENCHMARKS} | {"benchmarks"}), path


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_shapes_and_reports_every_figure_with_its_unit(tmp_path, shared):
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--shared-data",
                        str(shared), "--out", str(out), "--steps", "2", "--workers", "0,1"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["units"]) >= {"sentences_per_second", "pairs_per_second", "memory", "hours"}
    one, two = report["stage_one"], report["stage_two"]
    assert one["bare_forward_sentences_per_second"] > 0
    for dtype in ("bf16", "fp16"):
        assert 0 < one[dtype]["cache_over_bare"] and 0 <= one[dtype]["teacher_wait_share"] <= 1
    assert set(two["cached"]) == set(two["student_only"]) == {"0 workers", "1 workers"}
    for run in [*two["cached"].values(), *two["student_only"].values(), two["online"]]:
        assert run["pairs_per_second"] > 0 and 0 <= run["data_wait_fraction"] <= 1
    assert two["cached_over_student_only"] > 0 and two["cached_over_online"] > 0
    assert report["loader"]["pairs_per_second"] > 0
    assert report["memory"]["full_logits_logits_gb"] > report["memory"]["masked_rows_only_logits_gb"]
    cost = report["paper_run"]
    pairs = cost["pairs_per_language"] * cost["languages"] * cost["epochs"]
    assert cost["hours"] == pytest.approx(pairs / (cost["pairs_per_second_per_gpu"] * cost["gpus"]) / 3600, abs=0.05)
    assert "pairs/s" in cost["formula"] and "the paper's run" in r.stdout


def test_gpu_check_at_the_papers_shapes_refuses_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: the refusal is for machines without one")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_real_student_queues_every_row_including_the_ablations_as_commands_that_parse(tmp_path):
    """An ablation's job name starts with "-" ("-struca:0"); passed as "--job NAME", argparse took it
    for an option and every Table 5 job died at start-up. --dry-run parses each command back."""
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_student.py"), "--dry-run", "--phase",
                        "report", "--rows=-tlm,initial,-struca", "--seeds", "0,2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert names == ["-tlm:0", "initial:0", "-struca:0", "-tlm:2", "initial:2", "-struca:2"]
    assert all(f"--job={name} " in line for name, line in zip(names, r.stdout.splitlines()))
    assert not (tmp_path / "logs").exists()                     # nothing ran


def _fake_result(folder: Path, xnli: float, en: float, mean: float, cls: float) -> None:
    langs = ["ar", "bg", "de", "es", "fr", "hi", "zh"]
    (folder / "xnli").mkdir(parents=True)
    (folder / "retrieval").mkdir(parents=True)
    summary = {lang: {"mean": xnli} for lang in langs} | {"en": {"mean": en}}
    (folder / "xnli" / "results.json").write_text(json.dumps({"summary": summary}))
    sets = {f"ntrex-{lang}": {"mean": mean} for lang in langs}
    (folder / "retrieval" / "results.json").write_text(json.dumps({"average": {"mean": mean, "cls": cls},
                                                                   "sets": sets}))


def test_real_student_table_pairs_each_row_with_the_initial_student_of_the_same_seed(tmp_path):
    """Worked by hand: project - initial per seed, XNLI (57.5-55.0, 56.5-57.3) = (+2.5, -0.8), mean +0.85,
    std 2.33; seed 2 of project is missing, so it is left out of both sides."""
    for seed, (x, en) in enumerate([(55.0, 58.0), (57.3, 61.0), (53.0, 56.0)]):
        _fake_result(tmp_path / "models" / f"initial-s{seed}" / "report", x, en, 97.0, 91.0)
    _fake_result(tmp_path / "models" / "project-s0" / "report", 57.5, 59.0, 95.5, 92.0)
    _fake_result(tmp_path / "models" / "project-s1" / "report", 56.5, 60.0, 94.5, 89.0)
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_student.py"), "--table-only", "--phase",
                        "report", "--rows", "initial,project", "--seeds", "0,1,2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    paired = [line for line in r.stdout.splitlines() if line.startswith("| project | 0,1 | +")]
    assert paired == ["| project | 0,1 | +0.9 ± 2.3 | +0.0 ± 1.4 | -2.0 ± 0.7 | -0.5 ± 2.1 |"], r.stdout
    assert "| project | 0,1 | 57.0 ± 0.7 | 59.5 ± 0.7 | 95.0 ± 0.7 | 90.5 ± 2.1 |" in r.stdout
