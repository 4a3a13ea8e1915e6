"""Zero-shot PAWS-X for the students of the teacher-heads and ablation benchmarks (docs/results.md,
"Teacher heads trained online", PAWS-X). Prints a markdown table and writes OUT/pawsx.md, .json.

Each model is one `mmkd eval pawsx` command, printed before it runs:
fine-tuned on PAWS-X dev-en (the shared data's only English PAWS; 1,800 pairs train, the last 200
select the epoch), 2 epochs, lr 5e-5 (the XNLI protocol of benchmarks/teacher_heads.py), fine-tuning
seed = training seed + 1; accuracy on test rows [0, 1000) of de and zh, the two labelled PAWS-X test
languages. No choice of mmkd's settings was made on PAWS-X.

The students are those the other benchmarks saved under --out (nothing is trained here):
- initial:   all-MiniLM-L6-v2 as it starts (only the fine-tuning seed varies);
- structure: OUT/ablate/sS/mmkd/student (benchmarks/ablation_seeds.py: exactly the `structure`
             row's settings: the demo's, structure teacher heads);
- train, guard, frozen, mse: OUT/demo/ROW-sS/student (benchmarks/teacher_heads.py).
A row's seed whose student is not on disk is skipped (said on the console). Jobs run two at a
time, one thread each; a model whose results.json exists is reused.

    python benchmarks/pawsx_transfer.py --shared-data ../shared/data --out runs/heads \
        [--rows initial,structure,train] [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from teacher_heads import mean_std, minilm, run_queue  # noqa: E402

LANGS = ["de", "zh"]
PAWSX = dict(epochs=2.0, lr=5e-5, max_eval_examples=1000, test_offset=0)


def student(out: Path, row: str, seed: int) -> str | None:
    if row == "initial":
        return minilm()
    folder = out / "ablate" / f"s{seed}" / "mmkd" if row == "structure" else out / "demo" / f"{row}-s{seed}"
    return str(folder / "student") if (folder / "student" / "config.json").is_file() else None


def command(model: str, shared: Path, seed: int, result: Path) -> list[str]:
    return [sys.executable, "-m", "mmkd", "eval", "pawsx", "--model", model, "--eval-data-dir", str(shared),
            "--train-file", str(shared / "pawsx" / "dev-en.tsv"), "--languages", ",".join(LANGS),
            "--epochs", str(PAWSX["epochs"]), "--lr", str(PAWSX["lr"]),
            "--max-eval-examples", str(PAWSX["max_eval_examples"]), "--test-offset", str(PAWSX["test_offset"]),
            "--seeds", str(seed + 1), "--out", str(result)]


def table(out: Path, rows: list[str], seeds: list[int]) -> tuple[str, dict]:
    results: dict = {}
    for row in rows:
        per = results.setdefault(row, {"seeds": [], "pawsx": [], "pawsx_lang": {}})
        for seed in seeds:
            path = out / "pawsx" / f"{row}-s{seed}" / "results.json"
            if not path.is_file():
                continue
            summary = json.loads(path.read_text())["summary"]
            per["seeds"].append(seed)
            per["pawsx"].append(summary["avg"]["mean"])
            for lang in LANGS:
                per["pawsx_lang"].setdefault(lang, []).append(summary[lang]["mean"])
    lines = ["| model (demo settings) | seeds | PAWS-X avg (de, zh) | PAWS-X de | PAWS-X zh |", "|---|---|---|---|---|"]
    for row, per in results.items():
        langs = " | ".join(mean_std(per["pawsx_lang"].get(lang, [])) for lang in LANGS)
        lines.append(f"| {row} | {','.join(map(str, per['seeds'])) or '–'} | {mean_std(per['pawsx'])} | {langs} |")
    return "\n".join(lines), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/heads", help="where the other benchmarks saved their students")
    ap.add_argument("--rows", default="initial,structure,train")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2, help="models at a time (one thread each)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out, shared = Path(args.out), Path(args.shared_data).resolve()
    rows, seeds = args.rows.split(","), [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        todo = []
        for seed in seeds:
            for row in rows:
                model = student(out, row, seed)
                result = out / "pawsx" / f"{row}-s{seed}"
                if model is None:
                    print(f"{row}:{seed}: no saved student under {out}, skipped", file=sys.stderr, flush=True)
                elif not (result / "results.json").is_file():
                    todo.append((f"{row}:{seed}", command(model, shared, seed, result)))
        run_queue([(name, cmd, out / "logs" / f"pawsx-{name.replace(':', '-s')}.log") for name, cmd in todo],
                  args.jobs, show=True)
    text, results = table(out, rows, seeds)
    (out / "pawsx.md").write_text(text + "\n")
    (out / "pawsx.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
