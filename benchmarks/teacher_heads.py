"""Teacher-head modes compared on transfer and retrieval, at demo scale (docs/results.md, "Teacher
heads trained online"). Prints a markdown table and writes OUT/table.md, OUT/table.json.

Rows (each with seeds 0, 1, 2 of data order, masks and head initialisation):
- initial:   all-MiniLM-L6-v2 as it starts (only the fine-tuning seed varies);
- frozen, train, structure, guard: `mmkd train --teacher-heads MODE` with the demo's settings
  (mmkd.demo.demo_training) or with the paper's (--settings paper: TrainConfig's defaults), on the
  demo's data and cache, 120 steps of 30 pairs;
- mse:       the method a user would otherwise pick, sentence-transformers' multilingual distillation
             (Reimers & Gurevych 2020), written here with transformers: the student's mean-pooled
             vectors of x and of en regressed with MSE on the frozen teacher's mean-pooled vector of
             en; same pairs, same 120 steps of 30 pairs, lr 5e-5, AdamW, 10% warm-up.

Measured per model, on data that played no part in any choice of mmkd's settings:
- retrieval: x->en / en->x, [CLS] and mean pooling, first 500 lines of NTREX-128 en-fr/de/es and
  of Europarl v7 fr-en (../shared/data/parallel);
- XNLI zero-shot: fine-tuned on XNLI dev-en (2,241 train, the last 249 select the epoch), 2 epochs,
  lr 5e-5, fine-tuning seed = training seed + 1; accuracy on test rows [0, 300) of each of the 8
  labelled languages (ar bg de en es fr hi zh). `mmkd demo` reports rows [4710, 5010) instead.
- collapse: the smallest value over the run of each collapse indicator (std_* of metrics.csv).

Jobs run two at a time, one thread each; a finished job (its results.json files) is reused.

    python benchmarks/teacher_heads.py --shared-data ../shared/data --out runs/heads [--settings demo]
        [--rows initial,frozen,train,structure,guard,mse] [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LANGS = ["ar", "bg", "de", "en", "es", "fr", "hi", "zh"]
XNLI = dict(epochs=2.0, lr=5e-5, max_eval_examples=300, test_offset=0)
MODES = ("frozen", "train", "structure", "guard")


def minilm() -> str:
    from mmkd.demo import minilm_path
    return minilm_path()


def stage(out: Path) -> tuple[Path, Path, dict]:
    """The demo's training data and cache (the same split `mmkd demo` makes)."""
    from mmkd.cache import CacheConfig, build_cache
    from mmkd.corpus import CorpusConfig, list_corpora, prepare_corpus
    from mmkd.demo import DemoConfig, stage_data

    demo = DemoConfig(out=str(out / "demo"))
    files = stage_data(demo, out / "demo")
    data = out / "demo" / "data"
    for lang, path in files["train"].items():
        if f"en-{lang}" not in list_corpora(str(data)):
            prepare_corpus(CorpusConfig(pair=f"en-{lang}", tsv=path, data_dir=str(data), min_tokens=demo.min_tokens),
                           progress=False)
    cache = out / "demo" / "cache"
    corpora = [f"en-{lang}" for lang in demo.languages]
    if not all((cache / c / "manifest.json").is_file() for c in corpora):
        build_cache(CacheConfig(corpora=corpora, teacher=minilm(), out=str(cache), data_dir=str(data), dtype="fp16"),
                    progress=False)
    return data, cache, files


def train_config(settings: str, mode: str, seed: int, cache: Path, data: Path, out: Path):
    from mmkd.demo import demo_training
    from mmkd.train import TrainConfig

    base = demo_training() if settings == "demo" else TrainConfig(max_steps=120, batch_size=30)
    return dataclasses.replace(base, teacher_heads=mode, seed=seed, cache=[str(cache)], student=minilm(),
                               out=str(out), data_dir=str(data), num_workers=0, log_with="none",
                               checkpoint_every=10**9)


def mse_distill(train_files: dict, out: Path, seed: int, steps: int = 120, batch: int = 30, lr: float = 5e-5) -> Path:
    """sentence-transformers' multilingual knowledge distillation, as a user would run it."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    if (out / "student" / "config.json").is_file():
        return out / "student"
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm())
    teacher = AutoModel.from_pretrained(minilm()).eval()
    student = AutoModel.from_pretrained(minilm()).train()
    rng = np.random.default_rng(seed)
    pairs = {lang: [line.split("\t")[:2] for line in Path(f).read_text(encoding="utf-8").splitlines()]
             for lang, f in train_files.items()}
    order = {lang: rng.permutation(len(p)) for lang, p in pairs.items()}
    per_lang = batch // len(pairs)

    def embed(model, texts):
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        return (hidden * mask).sum(1) / mask.sum(1)

    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, round(0.1 * steps), steps)
    log = []
    for step in range(steps):
        en, x = [], []
        for lang, p in pairs.items():
            idx = order[lang][(step * per_lang + np.arange(per_lang)) % len(p)]
            en += [p[i][0] for i in idx]
            x += [p[i][1] for i in idx]
        with torch.no_grad():
            target = embed(teacher, en)
        mse = torch.nn.functional.mse_loss
        loss = mse(embed(student, en), target) + mse(embed(student, x), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        log.append(loss.item())
    tmp = out / "student.tmp"
    student.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (out / "losses.json").write_text(json.dumps(log))
    os.replace(tmp, out / "student")
    return out / "student"


def retrieval_specs(shared: Path) -> list[str]:
    n, e = shared / "parallel" / "ntrex128", shared / "parallel" / "europarl_v7_fr-en"
    src = n / "newstest2019-src.eng.txt"
    return [f"ntrex-fr={src},{n / 'newstest2019-ref.fra.txt'}", f"ntrex-de={src},{n / 'newstest2019-ref.deu.txt'}",
            f"ntrex-es={src},{n / 'newstest2019-ref.spa.txt'}",
            f"europarl-fr={e / 'europarl-v7.fr-en.en'},{e / 'europarl-v7.fr-en.fr'}"]


def job(args) -> None:
    """One row and seed: train (unless initial), retrieval, XNLI. In a child process."""
    import torch

    torch.set_num_threads(1)
    from mmkd.eval.finetune import EvalConfig
    from mmkd.eval.retrieval import run_retrieval
    from mmkd.eval.runner import run_task, write_result
    from mmkd.train import train

    out, shared = Path(args.out), Path(args.shared_data)
    data, cache, files = stage(out)
    row, seed = args.job.split(":")
    seed = int(seed)
    folder = out / args.settings / f"{row}-s{seed}"
    if row == "initial":
        model = minilm()
    elif row == "mse":
        model = str(mse_distill(files["train"], folder, seed))
    else:
        if not (folder / "student" / "config.json").is_file():
            train(train_config(args.settings, row, seed, cache, data, folder), overwrite=True, progress=False)
        model = str(folder / "student")
    if not (folder / "retrieval" / "results.json").is_file():
        write_result(run_retrieval(model, retrieval_specs(shared), 500), folder / "retrieval")
    if not (folder / "xnli" / "results.json").is_file():
        cfg = EvalConfig(task="xnli", model=model, data_dir=str(shared), train_file=str(shared / "xnli" / "dev-en.tsv"),
                         languages=LANGS, seeds=[seed + 1], **XNLI)
        write_result(run_task(cfg), folder / "xnli")


def run_queue(jobs: list[tuple[str, list[str], Path]], at_once: int, show: bool = False) -> None:
    """Run (name, command, log file) jobs, `at_once` at a time with one thread each; report each end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo, running = list(jobs), []
    while todo or running:
        while todo and len(running) < at_once:
            name, cmd, log = todo.pop(0)
            if show:
                print(" ".join(cmd[1:]), file=sys.stderr, flush=True)
            log.parent.mkdir(parents=True, exist_ok=True)
            running.append((name, subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)))
        time.sleep(5)
        for name, proc in [r for r in running if r[1].poll() is not None]:
            running.remove((name, proc))
            print(f"{name}: {'done' if proc.returncode == 0 else f'FAILED ({proc.returncode})'}", file=sys.stderr,
                  flush=True)


def collapse(folder: Path) -> dict[str, float]:
    path = folder / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: min(float(r[k]) for r in rows) for k in rows[0] if k.startswith("std_") and rows[0][k] != ""}


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(out: Path, settings: str, rows: list[str], seeds: list[int]) -> tuple[str, dict]:
    results: dict = {}
    for row in rows:
        per = results.setdefault(row, {"seeds": [], "cls": [], "mean": [], "xnli": [], "xnli_lang": {}, "collapse": {}})
        for seed in seeds:
            folder = out / settings / f"{row}-s{seed}"
            r, x = folder / "retrieval" / "results.json", folder / "xnli" / "results.json"
            if not (r.is_file() and x.is_file()):
                continue
            ret, xnli = json.loads(r.read_text()), json.loads(x.read_text())
            per["seeds"].append(seed)
            per["cls"].append(ret["average"]["cls"])
            per["mean"].append(ret["average"]["mean"])
            per["xnli"].append(xnli["summary"]["avg"]["mean"])
            for lang in LANGS:
                per["xnli_lang"].setdefault(lang, []).append(xnli["summary"][lang]["mean"])
            for k, v in collapse(folder).items():
                per["collapse"][k] = min(v, per["collapse"].get(k, v))
    lines = [f"| model ({settings} settings) | seeds | XNLI avg (8 langs) | retrieval [CLS] | retrieval mean-pool | "
             f"XNLI {' / '.join(LANGS)} | smallest collapse indicator |", "|---|---|---|---|---|---|---|"]
    for row, per in results.items():
        low = min(per["collapse"].items(), key=lambda kv: kv[1]) if per["collapse"] else None
        langs = " / ".join(f"{statistics.fmean(v):.1f}" for v in per["xnli_lang"].values()) or "–"
        lines.append(f"| {row} | {','.join(map(str, per['seeds'])) or '–'} | {mean_std(per['xnli'])} | "
                     f"{mean_std(per['cls'])} | {mean_std(per['mean'])} | {langs} | "
                     f"{f'{low[0]} {low[1]:.3f}' if low else '–'} |")
    return "\n".join(lines), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/heads")
    ap.add_argument("--settings", choices=["demo", "paper"], default="demo")
    ap.add_argument("--rows", default="initial,frozen,train,structure,guard,mse")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2, help="jobs at a time (one thread each)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--todo", default=None, help="explicit jobs ROW:SEED,... in this order (default: every row of "
                                                 "seed 0, then of seed 1, ...)")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        job(args)
        return
    out = Path(args.out)
    rows, seeds = args.rows.split(","), [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        stage(out)
        todo = args.todo.split(",") if args.todo else [f"{row}:{seed}" for seed in seeds for row in rows]
        run_queue([(name, [sys.executable, __file__, "--job", name, "--out", str(out), "--settings", args.settings,
                           "--shared-data", args.shared_data],
                    out / "logs" / f"{args.settings}-{name.replace(':', '-s')}.log") for name in todo], args.jobs)
    text, results = table(out, args.settings, rows, seeds)
    (out / f"table-{args.settings}.md").write_text(text + "\n")
    (out / f"table-{args.settings}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
