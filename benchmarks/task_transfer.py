"""Zero-shot PAWS-X or XQuAD for the students of the teacher-heads and ablation benchmarks
(docs/results.md, "Teacher heads trained online", PAWS-X and XQuAD). Prints a markdown table and
writes OUT/TASK.md, OUT/TASK.json.

Each model is one `mmkd eval TASK` command, printed before it runs; fine-tuning seed = training
seed + 1. No choice of mmkd's settings was made on either task.
- pawsx: fine-tuned on PAWS-X dev-en (the shared data's only English PAWS; 1,800 pairs train, the
  last 200 select the epoch), 2 epochs, lr 5e-5 (the XNLI protocol of benchmarks/teacher_heads.py);
  accuracy on test rows [0, 1000) of de and zh, the two labelled PAWS-X test languages.
- xquad: fine-tuned on the shared data's 1,500 English TyDi-QA GoldP training questions (the last
  150 select the epoch), 2 epochs, `mmkd eval xquad`'s other defaults (lr 3e-5, weight decay 1e-4,
  10% warm-up, batch 32) but 128-token windows with a 32-token overlap (CPU time); F1 on the first
  200 questions of each of the 6 XQuAD languages of the shared data (ar de en es hi zh).

The students are those the other benchmarks saved under --out (nothing is trained here):
- initial:   all-MiniLM-L6-v2 as it starts (only the fine-tuning seed varies);
- structure: OUT/ablate/sS/mmkd/student (benchmarks/ablation_seeds.py: exactly the `structure`
             row's settings: the demo's, structure teacher heads);
- train, guard, frozen, mse: OUT/demo/ROW-sS/student (benchmarks/teacher_heads.py);
- paper-ROW: OUT/paper/ROW-sS/student (teacher_heads.py --settings paper).
A row's seed whose student is not on disk is skipped (said on the console). Jobs run two at a
time, one thread each; a model whose results.json exists is reused.

    python benchmarks/task_transfer.py --task pawsx|xquad --shared-data ../shared/data --out runs/heads \
        [--rows initial,structure,train] [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from teacher_heads import mean_std, minilm, run_queue  # noqa: E402

TASKS = {
    "pawsx": dict(languages=["de", "zh"], measure="accuracy",
                  train=lambda shared: shared / "pawsx" / "dev-en.tsv",
                  options=["--epochs", "2", "--lr", "5e-5", "--max-eval-examples", "1000", "--test-offset", "0"]),
    "xquad": dict(languages=["ar", "de", "en", "es", "hi", "zh"], measure="F1",
                  train=lambda shared: shared / "english_qa_train" / "tydiqa-goldp-v1.1-en-train.first1500.json",
                  options=["--epochs", "2", "--max-length", "128", "--doc-stride", "32", "--max-eval-examples", "200"]),
}


def student(out: Path, row: str, seed: int) -> str | None:
    if row == "initial":
        return minilm()
    if row == "structure":
        folder = out / "ablate" / f"s{seed}" / "mmkd"
    elif row.startswith("paper-"):
        folder = out / "paper" / f"{row.removeprefix('paper-')}-s{seed}"
    else:
        folder = out / "demo" / f"{row}-s{seed}"
    return str(folder / "student") if (folder / "student" / "config.json").is_file() else None


def command(task: str, model: str, shared: Path, seed: int, result: Path) -> list[str]:
    spec = TASKS[task]
    return [sys.executable, "-m", "mmkd", "eval", task, "--model", model, "--eval-data-dir", str(shared),
            "--train-file", str(spec["train"](shared)), "--languages", ",".join(spec["languages"]),
            *spec["options"], "--seeds", str(seed + 1), "--out", str(result)]


def table(task: str, out: Path, rows: list[str], seeds: list[int]) -> tuple[str, dict]:
    langs = TASKS[task]["languages"]
    results: dict = {}
    for row in rows:
        per = results.setdefault(row, {"seeds": [], task: [], f"{task}_lang": {}})
        for seed in seeds:
            path = out / task / f"{row}-s{seed}" / "results.json"
            if not path.is_file():
                continue
            summary = json.loads(path.read_text())["summary"]
            per["seeds"].append(seed)
            per[task].append(summary["avg"]["mean"])
            for lang in langs:
                per[f"{task}_lang"].setdefault(lang, []).append(summary[lang]["mean"])
    name = {"pawsx": "PAWS-X", "xquad": "XQuAD"}[task]
    head = " | ".join(f"{name} {lang}" for lang in langs)
    lines = [f"| model | seeds | {name} {TASKS[task]['measure']} avg ({', '.join(langs)}) | {head} |",
             "|---|---|---|" + "---|" * len(langs)]
    for row, per in results.items():
        cells = " | ".join(mean_std(per[f"{task}_lang"].get(lang, [])) for lang in langs)
        lines.append(f"| {row} | {','.join(map(str, per['seeds'])) or '–'} | {mean_std(per[task])} | {cells} |")
    return "\n".join(lines), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/heads", help="where the other benchmarks saved their students")
    ap.add_argument("--rows", default="initial,structure,train",
                    help="comma-separated: initial, structure, train, guard, frozen, mse, paper-ROW")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--todo", default="", help="explicit jobs ROW:SEED,... in this order (default: every row of "
                                               "seed 0, then of seed 1, ...)")
    ap.add_argument("--jobs", type=int, default=2, help="models at a time (one thread each)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out, shared = Path(args.out), Path(args.shared_data).resolve()
    rows, seeds = args.rows.split(","), [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        wanted = ([(r, int(s)) for r, s in (item.rsplit(":", 1) for item in args.todo.split(","))] if args.todo
                  else [(row, seed) for seed in seeds for row in rows])
        todo = []
        for row, seed in wanted:
            model = student(out, row, seed)
            result = out / args.task / f"{row}-s{seed}"
            if model is None:
                print(f"{row}:{seed}: no saved student under {out}, skipped", file=sys.stderr, flush=True)
            elif not (result / "results.json").is_file():
                todo.append((f"{row}:{seed}", command(args.task, model, shared, seed, result)))
        run_queue([(name, cmd, out / "logs" / f"{args.task}-{name.replace(':', '-s')}.log") for name, cmd in todo],
                  args.jobs, show=True)
    text, results = table(args.task, out, rows, seeds)
    (out / f"{args.task}.md").write_text(text + "\n")
    (out / f"{args.task}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
