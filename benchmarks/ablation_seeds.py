"""Table 5 at small scale on zero-shot transfer: `mmkd ablate --eval xnli` once per seed, then one
table of mean ± std over the seeds (docs/results.md, "The ablation sweep on transfer").

Each seed is one `mmkd ablate` command, exactly as a user runs it (printed before it starts), on
the demo's data and cache (benchmarks/teacher_heads.py stages them; `--out` is shared with it) with
the demo's training settings (mmkd.demo.demo_training: structure teacher heads, 120 steps of 30
pairs) and the XNLI protocol of benchmarks/teacher_heads.py: fine-tuned on XNLI dev-en (2 epochs,
lr 5e-5, fine-tuning seed = training seed + 1), accuracy on test rows 0-299 of the 8 labelled
languages. So the `mmkd` row of seed S is the `structure` row of seed S there, and the initial
student is its `initial` row (--no-baseline here). Sweeps run two at a time, one thread each; an
interrupted sweep continues where it stopped (mmkd ablate reuses finished runs and evaluations).

    python benchmarks/ablation_seeds.py --shared-data ../shared/data --out runs/heads [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from teacher_heads import LANGS, XNLI, minilm, run_queue, stage  # noqa: E402


def command(out: Path, shared: Path, seed: int) -> list[str]:
    from mmkd.demo import demo_training

    d = demo_training()
    sweep = out / "ablate" / f"s{seed}"
    return [sys.executable, "-m", "mmkd", "ablate", "--cache", str(out / "demo" / "cache"),
            "--data-dir", str(out / "demo" / "data"), "--student", minilm(), "--out", str(sweep),
            "--max-steps", str(d.max_steps), "--batch-size", str(d.batch_size), "--lr", str(d.lr),
            "--alpha", str(d.alpha), "--xwcl-similarity", d.xwcl_similarity,
            "--xwcl-temperature", str(d.xwcl_temperature), "--senta-center",
            "--head-warmup-steps", str(d.head_warmup_steps), "--teacher-heads", d.teacher_heads,
            "--seed", str(seed), "--num-workers", "0", "--log-with", "none", "--checkpoint-every", "1000000",
            "--eval", "xnli", "--eval-data-dir", str(shared), "--eval-train-file", str(shared / "xnli" / "dev-en.tsv"),
            "--eval-languages", ",".join(LANGS), "--eval-epochs", str(XNLI["epochs"]), "--eval-lr", str(XNLI["lr"]),
            "--max-eval-examples", str(XNLI["max_eval_examples"]), "--eval-test-offset", str(XNLI["test_offset"]),
            "--eval-seeds", str(seed + 1), "--no-baseline", "--quiet"]


def table(out: Path, seeds: list[int]) -> tuple[str, dict]:
    """Rows in the sweep's order; per row the seeds that finished, XNLI average and per language."""
    from mmkd.ablate import runs

    results: dict = {}
    for name, _ in runs():
        per = results.setdefault(name, {"seeds": [], "xnli": [], "xnli_lang": {}})
        for seed in seeds:
            path = out / "ablate" / f"s{seed}" / name / "student" / "eval" / "xnli" / "results.json"
            if not path.is_file():
                continue
            summary = json.loads(path.read_text())["summary"]
            per["seeds"].append(seed)
            per["xnli"].append(summary["avg"]["mean"])
            for lang in LANGS:
                per["xnli_lang"].setdefault(lang, []).append(summary[lang]["mean"])

    def ms(v: list[float]) -> str:
        if not v:
            return "–"
        return f"{v[0]:.1f}" if len(v) == 1 else f"{statistics.fmean(v):.1f} ± {statistics.stdev(v):.1f}"

    lines = ["| model (demo settings) | seeds | XNLI avg (8 langs) | per seed | XNLI " + " / ".join(LANGS) + " |",
             "|---|---|---|---|---|"]
    for name, per in results.items():
        langs = " / ".join(f"{statistics.fmean(v):.1f}" for v in per["xnli_lang"].values()) or "–"
        each = " / ".join(f"{v:.1f}" for v in per["xnli"]) or "–"
        lines.append(f"| {name} | {','.join(map(str, per['seeds'])) or '–'} | {ms(per['xnli'])} | {each} | {langs} |")
    return "\n".join(lines), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/heads", help="shared with benchmarks/teacher_heads.py (data, cache)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2, help="sweeps at a time (one thread each)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out, shared = Path(args.out), Path(args.shared_data).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        stage(out)
        run_queue([(f"seed {seed}", command(out, shared, seed), out / "logs" / f"ablate-s{seed}.log")
                   for seed in seeds], args.jobs, show=True)
    text, results = table(out, seeds)
    (out / "ablation-xnli.md").write_text(text + "\n")
    (out / "ablation-xnli.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
