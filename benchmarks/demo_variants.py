"""Does the student improve? Translation retrieval of the demo's student before and after short
MMKD runs under several settings, on the demo's data. Prints JSON.

    python benchmarks/demo_variants.py [--out runs/variants] [--steps 120] [--only A,B] [--seeds 0,1,2]

Data and models as in `mmkd demo` (Tatoeba en-fr/de/es training pairs; held out: the last 500
Tatoeba pairs per language and 500 TICO-19 en-fr/en-es lines; teacher and initial student
all-MiniLM-L6-v2). Every variant: 120 steps (--steps), batch 30 (10 per language), lr 5e-5 unless the
variant says otherwise, the cache in fp16.
Finished variants are reused (delete their folder to re-run). Runs of seed n > 0 go to KEY-sN, runs
of other than 120 steps to KEY[-sN]-<steps>steps; with several seeds the JSON gives each seed and
the mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = {
    "A": ("all four objectives, frozen teacher heads, lr 5e-5 (the demo's paper-faithful setting)", {}),
    "B": ("as A, lr 1e-5", {"lr": 1e-5}),
    "C": ("as A without TLM", {"without": ["tlm"]}),
    "F": ("as A, head warm-up 40 steps", {"head_warmup_steps": 40}),
    "H": ("as A, head warm-up 40 steps, XWCL cosine tau 0.1",
          {"head_warmup_steps": 40, "xwcl_similarity": "cosine", "xwcl_temperature": 0.1}),
    "T": ("TLM only", {"without": ["xwcl", "senta", "struca"]}),
    "X": ("XWCL only (dot, tau 1)", {"without": ["tlm", "senta", "struca"]}),
    "S": ("SentA only", {"without": ["tlm", "xwcl", "struca"]}),
    "R": ("StrucA only", {"without": ["tlm", "xwcl", "senta"]}),
    "XC": ("XWCL only, cosine tau 0.1", {"without": ["tlm", "senta", "struca"], "xwcl_similarity": "cosine",
                                         "xwcl_temperature": 0.1}),
    "SB": ("SentA only, batch-norm heads", {"without": ["tlm", "xwcl", "struca"], "head_norm": "batch"}),
    "AB": ("all four, batch-norm heads", {"head_norm": "batch"}),
    "NS": ("all but SentA", {"without": ["senta"]}),
    "K1": ("all four, XWCL cosine tau 0.1, alpha 20",
           {"xwcl_similarity": "cosine", "xwcl_temperature": 0.1, "alpha": 20.0}),
    "K2": ("as K1, batch-norm heads", {"xwcl_similarity": "cosine", "xwcl_temperature": 0.1, "alpha": 20.0,
                                       "head_norm": "batch"}),
    "K3": ("as K1, head warm-up 40 steps", {"xwcl_similarity": "cosine", "xwcl_temperature": 0.1, "alpha": 20.0,
                                            "head_warmup_steps": 40}),
    "SC": ("SentA only, batch-centred", {"without": ["tlm", "xwcl", "struca"], "senta_center": True}),
    "KC": ("as K3, batch-centred SentA", {"xwcl_similarity": "cosine", "xwcl_temperature": 0.1, "alpha": 20.0,
                                         "head_warmup_steps": 40, "senta_center": True}),
    "KD": ("as KC, alpha 50", {"xwcl_similarity": "cosine", "xwcl_temperature": 0.1, "alpha": 50.0,
                               "head_warmup_steps": 40, "senta_center": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/variants")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--only", default=None, help="comma-separated variant letters")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; seed 0 runs in DIR/KEY, seed n in DIR/KEY-sN")
    args = ap.parse_args()

    from mmkd.cache import CacheConfig, build_cache
    from mmkd.corpus import CorpusConfig, list_corpora, prepare_corpus
    from mmkd.demo import DemoConfig, minilm_path, stage_data
    from mmkd.eval.retrieval import run_retrieval
    from mmkd.train import TrainConfig, train

    root = Path(args.out)
    files = stage_data(DemoConfig(out=str(root)), root)
    teacher, data_dir = minilm_path(), str(root / "data")
    for lang, path in files["train"].items():
        if f"en-{lang}" not in list_corpora(data_dir):
            prepare_corpus(CorpusConfig(pair=f"en-{lang}", tsv=path, data_dir=data_dir, min_tokens=3), progress=False)
    if not (root / "cache" / "en-fr" / "manifest.json").exists():
        build_cache(CacheConfig(corpora=["en-de", "en-es", "en-fr"], teacher=teacher, out=str(root / "cache"),
                                data_dir=data_dir), progress=False)

    def retrieval(model: str, dest: Path) -> dict:
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(run_retrieval(model, files["heldout"])))
        r = json.loads(dest.read_text())
        return {"cls": round(r["average"]["cls"], 1), "mean": round(r["average"]["mean"], 1),
                "cls_per_set": {k: round(v["cls"], 1) for k, v in r["sets"].items()}}

    report = {"steps": args.steps, "batch_size": 30, "before": retrieval(teacher, root / "before.json"), "variants": {}}
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    seeds = [int(s) for s in args.seeds.split(",")]
    for key in chosen:
        what, overrides = VARIANTS[key]
        runs = {}
        for seed in seeds:
            out = root / (key if seed == 0 else f"{key}-s{seed}")
            if args.steps != 120:
                out = out.with_name(f"{out.name}-{args.steps}steps")
            if not (out / "student" / "config.json").exists():
                base = dict(cache=[str(root / "cache")], student=teacher, out=str(out), data_dir=data_dir,
                            batch_size=30, max_steps=args.steps, lr=5e-5, num_workers=1, log_with="none",
                            checkpoint_every=10**9, seed=seed)
                train(TrainConfig(**{**base, **overrides}), overwrite=True, progress=False)
            runs[seed] = retrieval(str(out / "student"), out / "retrieval.json")
        entry = {"setting": what, **runs[seeds[0]]} if len(seeds) == 1 else {
            "setting": what, "seeds": runs,
            "cls": round(sum(r["cls"] for r in runs.values()) / len(runs), 1),
            "mean": round(sum(r["mean"] for r in runs.values()) / len(runs), 1)}
        report["variants"][key] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
