"""The README's paper-scale workflow, rehearsed as written.

The bash block under "The real workflow" in README.md is run by bash, command for command, with
only sizes and names swapped for local stand-ins (each swap is checked to apply, so a README change
that this rehearsal does not follow fails here):
- OPUS: a server on 127.0.0.1 serving Moses zips of real NTREX-128 sentences for all seven pairs,
  named through MMKD_OPUS_BASE_URL (the README's commands name no mirror);
- `bert-base-cased` / `bert-base-multilingual-cased`: tiny cased models in a local hub cache under
  exactly those names (HF_HUB_OFFLINE): an English teacher and a multilingual student with another
  vocabulary, both saved like the real checkpoints (BertForPreTraining: MLM head, pooler, NSP head);
- 8 GPUs: 2 CPU processes (gloo), training a few steps; evaluation on slices of the shared XNLI,
  PAWS-X, XQuAD and TyDi-QA files laid out as XTREME does (`data_dir=DIR`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loopback import opus_mirror, serve
from mmkd.tiny import make_tiny_bert

REPO = Path(__file__).resolve().parents[1]
SEVEN = ("en-ar", "en-bg", "en-de", "en-es", "en-fr", "en-hi", "en-zh")


def readme_workflow() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## The real workflow", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments dropped, spaces folded."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _hub_model(hub: Path, repo_id: str, folder: Path) -> None:
    """`folder` in the layout of a hub cache, so `from_pretrained(repo_id)` finds it offline."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    rev = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)


def _eval_layout(root: Path, shared: Path) -> Path:
    """XTREME's local layout from the shared files: English train/dev split from the English dev
    sets (the only labelled English data shared), every test language as shared."""
    for task in ("xnli", "pawsx"):
        (root / task).mkdir(parents=True)
        dev = (shared / task / "dev-en.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (root / task / "train-en.tsv").write_text("".join(dev[:200]), encoding="utf-8")
        (root / task / "dev-en.tsv").write_text("".join(dev[200:300]), encoding="utf-8")
    for f in (shared / "xnli").glob("test-*.tsv"):
        os.symlink(f, root / "xnli" / f.name)
    for lang in ("de", "zh"):
        os.symlink(shared / "pawsx" / f"test-{lang}.tsv", root / "pawsx" / f"test-{lang}.tsv")
    for lang in ("en", "es", "fr"):   # PAWS-X tests only de and zh are shared: their labelled dev stands in
        os.symlink(shared / "pawsx" / f"dev-{lang}.tsv", root / "pawsx" / f"test-{lang}.tsv")
    (root / "squad").mkdir()
    os.symlink(next((shared / "english_qa_train").glob("*.json")), root / "squad" / "train-v1.1.json")
    (root / "xquad").mkdir()
    for f in (shared / "xquad").glob("xquad.*.json"):
        os.symlink(f, root / "xquad" / f.name)
    return root


def rehearsal_script(evaldata: Path) -> str:
    block = readme_workflow()
    eval_slice = f"data_dir={evaldata} max_train_examples=48 max_eval_examples=16 epochs=1"
    swaps = [
        ("--num_processes 8", "--num_processes 2"),                      # 8 GPUs -> 2 CPU processes
        ("--mixed_precision bf16", "--mixed_precision no"),             # bf16 autocast is for GPUs
        ("--out runs/mmkd", "--out runs/mmkd max_steps=3"),
        ("mmkd eval xnli  --model runs/mmkd/student", f"mmkd eval xnli --model runs/mmkd/student {eval_slice}"),
        ("mmkd eval xnli  --model bert-base-multilingual-cased", f"mmkd eval xnli --model bert-base-multilingual-cased {eval_slice}"),
        ("mmkd eval pawsx --model runs/mmkd/student", f"mmkd eval pawsx --model runs/mmkd/student {eval_slice}"),
        ("mmkd eval xquad --model runs/mmkd/student", f"mmkd eval xquad --model runs/mmkd/student {eval_slice}"),
        ("--eval xnli --eval pawsx --eval xquad", f"--eval xnli --eval pawsx --eval xquad eval.data_dir={evaldata} "
                                                  "eval.max_train_examples=48 eval.max_eval_examples=16 eval.epochs=1 "
                                                  "train.max_steps=2"),
    ]
    for old, new in swaps:
        assert old in block, f"README's workflow no longer contains {old!r}: update the rehearsal with it"
        block = block.replace(old, new)
    return "set -euo pipefail\n" + block


@pytest.mark.slow
def test_readme_workflow_runs_as_written(tmp_path, shared, english_texts, multilingual_texts):
    hub = tmp_path / "hub"
    # 512 positions, like the real checkpoints (XQuAD's default windows are 384 tokens).
    teacher = make_tiny_bert(english_texts, tmp_path / "teacher-src", 3000, seed=11, mlm=True, positions=512)
    student = make_tiny_bert(multilingual_texts, tmp_path / "student-src", 6000, seed=12, mlm=True, positions=512)
    _hub_model(hub, "bert-base-cased", teacher)
    _hub_model(hub, "bert-base-multilingual-cased", student)
    evaldata = _eval_layout(tmp_path / "evaldata", shared)
    bin_dir = tmp_path / "bin"        # `mmkd` and `accelerate` as the README calls them, from this Python
    bin_dir.mkdir()
    for name, module in (("mmkd", "mmkd"), ("accelerate", "accelerate.commands.accelerate_cli")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "rehearsal.sh").write_text(rehearsal_script(evaldata))
    with serve(opus_mirror(tmp_path / "opus", shared, lines=60)) as server:
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_CACHE": str(hub),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MMKD_OPUS_BASE_URL": server.url,
               "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("MMKD_DATA_DIR", None)
        r = subprocess.run(["bash", "rehearsal.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        log = r.stdout + r.stderr
        errors = [line for line in log.splitlines() if line.startswith(("error:", "Error:", "FAIL"))]
        assert r.returncode == 0, "\n".join(errors) + "\n...\n" + log[-4000:]
        fetched = sorted(path for path, _ in server.requests)
    assert len(fetched) == 8 and all(p.endswith(".txt.zip") for p in fetched)   # bg has two corpora

    # 1-2: every corpus prepared and cached by 2 processes, with the teacher named as in the README.
    for pair in SEVEN:
        assert (work / "data" / "corpora" / pair / "pairs.arrow").is_file()
        manifest = json.loads((work / "cache" / pair / "manifest.json").read_text())
        assert manifest["teacher"]["name_or_path"] == "bert-base-cased"
    assert json.loads((work / "cache" / "en-fr" / "summary.json").read_text())["processes"] == 2
    assert "OK cache/en-fr" in log

    # 3: trained on 2 processes; the student is the whole starting model.
    run = json.loads((work / "runs" / "mmkd" / "config.json").read_text())
    assert run["processes"] == 2 and run["total_steps"] == 3
    from transformers import AutoModelForSequenceClassification, BertForPreTraining

    start = BertForPreTraining.from_pretrained(student)
    clf = AutoModelForSequenceClassification.from_pretrained(work / "runs" / "mmkd" / "student", num_labels=3)
    assert torch.equal(clf.bert.pooler.dense.weight, start.bert.pooler.dense.weight)

    # 4: zero-shot results for the student and its starting model; the card shows them.
    student_eval = work / "runs" / "mmkd" / "student" / "eval"
    for task in ("xnli", "pawsx", "xquad"):
        result = json.loads((student_eval / task / "results.json").read_text())
        assert result["model"] == "runs/mmkd/student" and result["summary"]["avg"]["mean"] >= 0
    xnli = json.loads((student_eval / "xnli" / "results.json").read_text())
    assert xnli["languages"] == ["ar", "bg", "de", "en", "es", "fr", "hi", "zh"] and xnli["seeds"] == [1, 2, 3]
    assert (work / "runs" / "eval" / "bert-base-multilingual-cased" / "xnli" / "results.json").is_file()
    card = (work / "runs" / "mmkd" / "student" / "README.md").read_text()
    assert "base_model: bert-base-multilingual-cased" in card
    assert all(f"**{task}**" in card for task in ("xnli", "pawsx", "xquad"))
    assert "| runs/mmkd/student |" in log and "| bert-base-multilingual-cased |" in log   # mmkd report

    # 5: Table 5 from the same cache, no teacher forward pass.
    table = (work / "runs" / "ablate" / "ablation.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:8]] == [
        "baseline", "mmkd", "-xwcl", "-tlm", "-senta", "-struca"]
    assert "teacher forward passes during the sweep: 0" in log

    # A quiet console: mmkd's own lines, none of transformers' load reports.
    assert "LOAD REPORT" not in log and "seem corrupted" not in log
    assert "are not trained by MMKD and are saved unchanged with the student" in log


def test_gpu_doc_gives_the_rehearsed_commands():
    """docs/gpu.md explains the same workflow: each README command is in it as written."""
    doc = " ".join((REPO / "docs" / "gpu.md").read_text(encoding="utf-8").replace("\\\n", " ").split())
    for command in commands(readme_workflow()):
        assert command in doc, f"docs/gpu.md lacks the README command: {command}"


def test_root_cli_py_is_the_mmkd_command():
    a = subprocess.run([sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True, text=True, cwd=REPO)
    b = subprocess.run([sys.executable, "-m", "mmkd", "--help"], capture_output=True, text=True, cwd=REPO)
    assert a.returncode == 0 and a.stdout.replace("cli.py", "mmkd") == b.stdout.replace("python -m mmkd", "mmkd")
