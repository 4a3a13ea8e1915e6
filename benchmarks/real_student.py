"""The evidence for the real multilingual student (docs/results.md, "MMKD below the paper's budget,
where the student has room": the rule there was fixed and committed before any job here ran).

Teacher all-MiniLM-L6-v2, student multilingual-e5-small, the demo's training pairs and cache (Tatoeba
rows 0-1,499 of the paper's seven; TICO-19 en-sw and en-ur rows 300-1,799), a fixed budget of STEPS
steps of 36 pairs (4 of each of the nine languages). Every model is fine-tuned the same way for
zero-shot XNLI: XNLI dev-en rows 0-2240 train, rows 2241-2489 pick the epoch, 2 epochs, lr 5e-5,
batch 32, at the five fine-tuning seeds FT_SEEDS (the same for every model, so changes pair by seed).

Two phases, on disjoint data:
- select: initial and the candidates (training seed 0), measured on data that is never reported:
  XNLI *dev* rows 2241-2489 of the nine targets, and retrieval and held-out InfoNCE on the demo's
  held-out training pairs. `--phase select` ends by applying the rule and writing OUT/chosen.json;
- report: the rows (training seeds 0, 1, 2) on XNLI *test* rows 0-499 of en and the nine targets,
  and retrieval and InfoNCE on NTREX-128 lines 0-299 (the seven), TICO-19 rows 0-299 (ar es fr hi zh
  sw ur) and Tatoeba en-ur (all 609 pairs). It needs OUT/chosen.json.

Report rows: initial; paper (preset paper at the budget, with the head lr and StrucA tau chosen on
selection data); project (the chosen settings); project without each change of the method, one at
a time (-heads: no head lr, no head phase; -unigram: TLM's fresh head as transformers makes it;
-tau: StrucA's tau 0.1 with the diagonal, the preset's; -vectors: [CLS] on both sides; the offset
word mapping has no switch: bare_pieces.py measures it); mse (sentence-transformers' multilingual
distillation: the student's mean-pooled vectors of x and en regressed with MSE on the teacher's
mean-pooled vector of en, from the same cache, pairs, budget and lr); old-demo (the demo preset as it
ran before the method changes: no head lr, a random fresh MLM head, [CLS] on both sides).

    python benchmarks/real_student.py --shared-data ../shared/data --out runs/evidence --phase select
    python benchmarks/real_student.py --shared-data ../shared/data --out runs/evidence --phase report

Jobs run `--jobs` at a time with one thread each; a finished job (its results.json files) is reused,
so a queue can be stopped and run again. Each finished job's result files are committed under
evidence/real_student/ (the repository keeps them; runs/ does not): on a new machine,
`mkdir -p runs/evidence && cp -r evidence/real_student/models runs/evidence/` restores them, and only
the jobs not yet finished run. Prints the tables as markdown and writes OUT/table-PHASE.md
and .json. MMKD_EVIDENCE_SMOKE=1: a pipeline check in minutes, numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

STEPS, BATCH = int(os.environ.get("MMKD_EVIDENCE_STEPS", 60)), 36
HIGH = ["ar", "bg", "de", "es", "fr", "hi", "zh"]     # high-resource for multilingual-e5-small
LOW = ["sw", "ur"]                                      # low-resource for it
TARGETS = HIGH + LOW
XNLI_LANGS = ["en", *TARGETS]
FT_SEEDS = [1, 2, 3, 4, 5]
FINE_TUNE = dict(epochs=2.0, lr=5e-5, batch_size=32)
SMOKE = bool(os.environ.get("MMKD_EVIDENCE_SMOKE"))
if SMOKE:
    FINE_TUNE.update(epochs=1.0, max_train_examples=40, max_eval_examples=20)
    FT_SEEDS = [1]
REPORT_ROWS, REPORT_LINES = 500, 300
NTREX = {"ar": "arb", "bg": "bul", "de": "deu", "es": "spa", "fr": "fra", "hi": "hin", "zh": "zho_Hans"}
TICO = {"ar": "ar", "es": "es_LA", "fr": "fr", "hi": "hi", "zh": "zh", "sw": "sw", "ur": "ur"}
TICO_ENGLISH = {"es": "tico19-test.es_LA-side.en", "sw": "tico19-test.es_LA-side.en", "ur": "tico19-test.es_LA-side.en"}

# The project's settings before selection: the demo preset plus the method's changes.
PROJECT = {"head_lr": 1e-3, "head_warmup_steps": 10, "tlm": {"fresh_head": "unigram"},
           "senta": {"student_vector": "mean"}, "struca": {"student_vector": "mean"}}
# Each choice of the rule: its options, the first being the project's value (docs/results.md).
CHOICES = {
    "head lr": {"cand-project": {}, "cand-headlr3e-4": {"head_lr": 3e-4}},
    "head phase": {"cand-project": {}, "cand-phase20": {"head_warmup_steps": 20}},
    "StrucA tau": {"cand-project": {}, "cand-tau0.5": {"struca": {"temperature": 0.5}},
                   "cand-nodiag": {"struca": {"exclude_diagonal": True}}},
    "student vector": {"cand-project": {}, "cand-cls": {"senta": {"student_vector": "cls"},
                                                        "struca": {"student_vector": "cls"}}},
    "teacher vector": {"cand-project": {}, "cand-tmean": {"senta": {"teacher_vector": "mean"},
                                                          "struca": {"teacher_vector": "mean"}}},
    "TLM": {"cand-project": {}, "cand-notlm": {"without": ["tlm"]}},
}
CANDIDATES = {name: change for options in CHOICES.values() for name, change in options.items()}
WITHOUT = {"-heads": {"head_lr": None, "head_warmup_steps": 0}, "-unigram": {"tlm": {"fresh_head": "random"}},
           "-tau": {"struca": {"temperature": 0.1, "exclude_diagonal": False}},
           "-vectors": {"senta": {"student_vector": "cls", "teacher_vector": "cls"},
                        "struca": {"student_vector": "cls", "teacher_vector": "cls"}}}
OLD_DEMO = {"tlm": {"fresh_head": "random"}}
REPORT = ["initial", "paper", "project", *WITHOUT, "mse", "old-demo"]


def merge(*changes: dict) -> dict:
    """Nested settings mappings, the later winning key by key."""
    out: dict = {}
    for change in changes:
        for key, value in change.items():
            out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def stage(out: Path) -> dict:
    """The demo's data split and MiniLM cache (the same `mmkd demo` makes)."""
    from mmkd import settings as st
    from mmkd.config import TrainConfig
    from mmkd.demo import DemoConfig, prepare

    demo = DemoConfig(out=str(out / "demo"))
    teacher, student, cache, files = prepare(demo, st.load(TrainConfig, "demo"), out / "demo", False, lambda m: None)
    return {"student": student, "cache": cache, "files": files, "data": str(out / "demo" / "data")}


def chosen(out: Path) -> dict:
    path = out / "chosen.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run --phase select first (the report uses the settings it chose)")
    return json.loads(path.read_text())


def settings_of(row: str, seed: int, staged: dict, out: Path, folder: Path):
    """The TrainConfig of a trained row."""
    import dataclasses

    from mmkd import settings as st
    from mmkd.config import TrainConfig

    budget = {"max_steps": STEPS, "batch_size": BATCH, "seed": seed, "num_workers": 0, "log_with": "none",
              "checkpoint_every": 10 ** 6}
    if row in CANDIDATES:
        preset, change = "demo", merge(PROJECT, CANDIDATES[row])
    elif row == "paper":      # what the paper leaves open, as chosen on selection data
        pick = chosen(out)["settings"]
        preset, change = "paper", {"head_lr": pick.get("head_lr"),
                                   "struca": {k: v for k, v in pick.get("struca", {}).items()
                                              if k in ("temperature", "exclude_diagonal")}}
    elif row == "old-demo":
        preset, change = "demo", OLD_DEMO
    elif row == "project" or row in WITHOUT:
        preset, change = "demo", merge(chosen(out)["settings"], WITHOUT.get(row, {}))
    else:
        raise SystemExit(f"unknown row {row!r}")
    cfg = st.from_mapping(TrainConfig, merge(budget, change), row, base=st.load(TrainConfig, preset))
    return dataclasses.replace(cfg, cache=[staged["cache"]], student=staged["student"], out=str(folder / "run"),
                               data_dir=staged["data"])


def mse_distill(staged: dict, folder: Path, seed: int) -> str:
    """sentence-transformers' multilingual distillation from the cache: same pairs, order, budget, lr."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from mmkd.batching import PairKey
    from mmkd.features import open_cached
    from mmkd.optim import adamw
    from mmkd.schedule import BalancedSchedule

    done = folder / "student"
    if (done / "config.json").is_file():
        return str(done)
    torch.manual_seed(seed)
    features = open_cached([staged["cache"]])
    schedule = BalancedSchedule(features.sizes, BATCH, seed)
    tok = AutoTokenizer.from_pretrained(staged["student"])
    student = AutoModel.from_pretrained(staged["student"]).train()
    opt = adamw([{"params": [p for p in student.parameters()], "weight_decay": 0.01}], 5e-5)
    warmup = round(0.1 * STEPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / max(1, warmup) if s < warmup
                                              else max(0.0, (STEPS - s) / max(1, STEPS - warmup)))

    def embed(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = student(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        return (hidden * mask).sum(1) / mask.sum(1)

    losses = []
    for step in range(STEPS):
        keys = [PairKey(*k) for k in schedule.batch(step)]
        english, targets = _texts(features, keys)
        target = features.read(keys).batch().mean   # the teacher's own sentence embedding of en (format 3)
        mse = torch.nn.functional.mse_loss
        loss = mse(embed(english), target) + mse(embed(targets), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tmp = folder / "student.tmp"
    student.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (folder / "losses.json").write_text(json.dumps(losses))
    os.replace(tmp, done)
    return str(done)


def _texts(features, keys) -> tuple[list[str], list[str]]:
    """The pairs' English and target sentences as the cache holds them."""
    english, targets = [""] * len(keys), [""] * len(keys)
    for i, k in enumerate(keys):
        (en,), (x,) = features.caches[k.corpus].texts([k.pair])
        english[i], targets[i] = en, x
    return english, targets


def retrieval_sets(shared: Path, phase: str, files: dict) -> list[tuple[list[str], int | None]]:
    """(specs, line limit) groups of the phase's retrieval sets."""
    if phase == "select":
        return [(files["heldout"], None)]
    par = shared / "parallel"
    n, t = par / "ntrex128", par / "tico19_test"
    src = n / "newstest2019-src.eng.txt"
    first = ([f"ntrex-{lang}={src},{n / f'newstest2019-ref.{code}.txt'}" for lang, code in NTREX.items()]
             + [f"tico-{lang}={t / TICO_ENGLISH.get(lang, 'tico19-test.en')},{t / f'tico19-test.{code}'}"
                for lang, code in TICO.items()])
    return [(first, REPORT_LINES), ([f"tatoeba-ur={par / 'tatoeba_challenge' / 'eng-urd.tsv'}"], None)]


def job(args) -> None:
    """One row and seed: train (unless initial), retrieval, XNLI. In a child process."""
    import torch

    torch.set_num_threads(args.threads)
    from mmkd.eval.retrieval import run_retrieval
    from mmkd.eval.runner import run_task, write_result
    from mmkd.eval.settings import EvalConfig
    from mmkd.trainer import train

    out, shared = Path(args.out), Path(args.shared_data)
    staged = stage(out)
    row, seed = args.job.split(":")
    seed = int(seed)
    folder = out / "models" / f"{row}-s{seed}"
    dest = folder / args.phase
    if all((dest / task / "results.json").is_file() for task in ("retrieval", "xnli")):
        return      # finished (here, or restored from the committed evidence/ folder): nothing to train
    if row == "initial":
        model = staged["student"]
    elif row == "mse":
        model = mse_distill(staged, folder, seed)
    else:
        if not (folder / "run" / "student" / "config.json").is_file():
            train(settings_of(row, seed, staged, out, folder), overwrite=True, progress=False)
        model = str(folder / "run" / "student")
    if not (dest / "retrieval" / "results.json").is_file():
        parts = [run_retrieval(model, specs, limit) for specs, limit in retrieval_sets(shared, args.phase, staged["files"])]
        result = {**parts[0], "sets": {k: v for p in parts for k, v in p["sets"].items()}}
        result["average"] = {k: statistics.fmean(v[k] for v in result["sets"].values())
                             for k in ("cls", "mean", "cls_infonce", "mean_infonce")}
        write_result(result, dest / "retrieval")
    if not (dest / "xnli" / "results.json").is_file():
        split = dict(test_split="dev", test_offset=2241) if args.phase == "select" else \
            dict(test_split="test", test_offset=0, max_eval_examples=REPORT_ROWS)
        cfg = EvalConfig(task="xnli", model=model, data_dir=str(shared), train_file=str(shared / "xnli" / "dev-en.tsv"),
                         languages=XNLI_LANGS if args.phase == "report" else TARGETS, seeds=FT_SEEDS,
                         out=str(dest / "xnli"), **{**split, **FINE_TUNE})    # out: a job stopped mid-way keeps its seeds
        write_result(run_task(cfg), dest / "xnli")


def run_queue(jobs: list[tuple[str, list[str], Path]], at_once: int, threads: int) -> None:
    """Run (name, command, log file) jobs, `at_once` at a time; report each end."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    todo, running = list(jobs), []
    while todo or running:
        while todo and len(running) < at_once:
            name, cmd, log = todo.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            running.append((name, time.time(), subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                                                env=env)))
        time.sleep(5)
        for entry in [r for r in running if r[2].poll() is not None]:
            running.remove(entry)
            name, started, proc = entry
            state = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
            print(f"{name}: {state} in {(time.time() - started) / 60:.1f} min", file=sys.stderr, flush=True)


def _mean_std(values: list[float], sign: bool = False) -> str:
    fmt = "+.1f" if sign else ".1f"
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):.1f}"


def _set_lang(name: str) -> str:
    return name.rsplit("-", 1)[-1]


def collect(out: Path, phase: str, rows: list[str], seeds: list[int]) -> dict:
    """Per row and training seed: XNLI per language (mean of the fine-tuning seeds, and each of them),
    retrieval (mean pooling, [CLS]) and InfoNCE per language (averaged over that language's sets)."""
    results: dict = {}
    for row in rows:
        per = results.setdefault(row, {})
        for seed in ([0] if row == "initial" else seeds):     # the initial student has no training seed
            dest = out / "models" / f"{row}-s{seed}" / phase
            r, x = dest / "retrieval" / "results.json", dest / "xnli" / "results.json"
            if not (r.is_file() and x.is_file()):
                continue
            ret, xnli = json.loads(r.read_text()), json.loads(x.read_text())
            entry = {"xnli": {lang: xnli["summary"][lang]["mean"] for lang in xnli["summary"] if lang in XNLI_LANGS},
                     "xnli_by_ft_seed": {str(run["seed"]): run["test"] for run in xnli["runs"]}}
            for key in ("mean", "cls", "mean_infonce"):
                entry[key] = {}
                for lang in TARGETS:
                    sets = [v[key] for name, v in ret["sets"].items() if _set_lang(name) == lang]
                    if sets:
                        entry[key][lang] = statistics.fmean(sets)
            per[str(seed)] = entry
    return results


def _avg(entry: dict, key: str, langs: list[str]) -> float | None:
    values = [entry[key][lang] for lang in langs if lang in entry[key]]
    return statistics.fmean(values) if values else None


def table(out: Path, phase: str, rows: list[str], seeds: list[int]) -> tuple[str, dict]:
    results = collect(out, phase, rows, seeds)
    what = "XNLI dev rows 2241-2489" if phase == "select" else f"XNLI test rows 0-{REPORT_ROWS - 1}"
    ret_what = "held-out training pairs" if phase == "select" else "NTREX-128, TICO-19, Tatoeba en-ur"
    lines = [f"XNLI: {what}, mean of fine-tuning seeds {FT_SEEDS}; retrieval and InfoNCE: {ret_what}. "
             "Mean ± std over training seeds.", ""]
    for group, langs in (("the paper's seven", HIGH), ("sw, ur (low-resource)", LOW)):
        lines += [f"**{group}**", "",
                  "| model | seeds | XNLI avg | retrieval mean-pool | retrieval [CLS] | InfoNCE (mean) | "
                  f"XNLI {' / '.join(langs)} | mean-pool {' / '.join(langs)} |", "|---|---|---|---|---|---|---|---|"]
        for row, per in results.items():
            entries = list(per.values())
            cols = [_mean_std([v for e in entries if (v := _avg(e, key, langs)) is not None])
                    for key in ("xnli", "mean", "cls", "mean_infonce")]
            by_lang = [" / ".join(f"{statistics.fmean(e[key][lang] for e in entries):.1f}"
                                  if entries and all(lang in e[key] for e in entries) else "–" for lang in langs)
                       for key in ("xnli", "mean")]
            lines.append(f"| {row} | {','.join(per) or '–'} | " + " | ".join(cols + by_lang) + " |")
        lines += [""] + paired(results, langs, "initial") + [""]
        if "project" in results:
            lines += paired(results, langs, "project") + [""]
    return "\n".join(lines), results


def paired(results: dict, langs: list[str], reference: str) -> list[str]:
    """Each row's change from `reference` with the same training seed (the initial student: its one
    model) and the same fine-tuning seeds: per training seed, the mean over fine-tuning seeds of the
    paired XNLI change, ± the spread of those changes."""
    base = results.get(reference)
    if not base:
        return []
    lines = [f"Change from {reference} (paired by seed):", "",
             "| model | seeds | XNLI change per training seed (± fine-tuning seeds) | mean | retrieval mean-pool "
             "change | InfoNCE change |", "|---|---|---|---|---|---|"]
    for row, per in results.items():
        if row == reference:
            continue
        cells, means, ret, nce, used = [], [], [], [], []
        for seed, entry in per.items():
            ref = base.get("0" if reference == "initial" else seed)
            if ref is None:
                continue
            used.append(seed)
            diffs = [statistics.fmean(run[lang] for lang in langs)
                     - statistics.fmean(ref["xnli_by_ft_seed"][ft][lang] for lang in langs)
                     for ft, run in entry["xnli_by_ft_seed"].items() if ft in ref["xnli_by_ft_seed"]]
            if diffs:
                cells.append(_mean_std(diffs, sign=True))
                means.append(statistics.fmean(diffs))
            for key, acc in (("mean", ret), ("mean_infonce", nce)):
                a, b = _avg(entry, key, langs), _avg(ref, key, langs)
                if a is not None and b is not None:
                    acc.append(a - b)
        if used:
            lines.append(f"| {row} | {','.join(used)} | {'; '.join(cells)} | {_mean_std(means, sign=True)} | "
                         f"{_mean_std(ret, sign=True)} | {_mean_std(nce, sign=True)} |")
    return lines


def choose(results: dict) -> dict:
    """The pre-registered rule (docs/results.md): in each choice keep the option with the higher XNLI
    dev average over the nine targets, unless it loses more than 1.0 point of held-out mean-pooled
    retrieval against the project's option; ties within 0.3 XNLI points go to the lower held-out InfoNCE."""
    def score(name):
        e = results.get(name, {}).get("0")
        if e is None:
            raise SystemExit(f"selection: {name} has no results yet; run the select phase to the end")
        return _avg(e, "xnli", TARGETS), _avg(e, "mean", TARGETS), _avg(e, "mean_infonce", TARGETS)

    def better(a: str, b: str) -> str:
        (xa, _, na), (xb, _, nb) = score(a), score(b)
        if abs(xa - xb) <= 0.3:
            return a if na <= nb else b
        high, low = (a, b) if xa > xb else (b, a)
        return low if score(high)[1] < score(low)[1] - 1.0 else high

    settings, why = dict(PROJECT), {}
    for choice, options in CHOICES.items():
        kept = "cand-project"
        for name in options:                 # the project's option against each other one in turn
            if name != kept:
                kept = better(kept, name)
        x, r, n = score(kept)
        settings = merge(settings, options[kept])
        why[choice] = {"kept": kept, "xnli_dev": round(x, 2), "retrieval": round(r, 2), "infonce": round(n, 4)}
    return {"settings": settings, "choices": why}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/evidence")
    ap.add_argument("--phase", choices=["select", "report"], default="select")
    ap.add_argument("--rows", default=None, help="comma-separated (default: initial and the candidates when "
                                                 "selecting; the table's rows when reporting); write --rows=-heads,... "
                                                 "when the list starts with a row named -...")
    ap.add_argument("--seeds", default=None, help="default: 0 when selecting, 0,1,2 when reporting")
    ap.add_argument("--jobs", type=int, default=2, help="jobs at a time")
    ap.add_argument("--threads", type=int, default=1, help="threads per job")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs' commands (each checked to parse back "
                                                           "to its job) and run nothing")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        job(args)
        return
    out = Path(args.out)
    rows = args.rows.split(",") if args.rows else (["initial", *CANDIDATES] if args.phase == "select" else REPORT)
    seeds = [int(s) for s in (args.seeds or ("0" if args.phase == "select" else "0,1,2")).split(",")]
    if args.phase == "report" and not (args.dry_run or args.table_only):
        chosen(out)                                   # refused before any job: the rows need the choice
    # "--job=NAME", not "--job NAME": argparse would read an ablation's "-tlm:0" as an option
    names = list(dict.fromkeys(f"{row}:{0 if row == 'initial' else seed}" for seed in seeds for row in rows))
    queue = [(name, [sys.executable, __file__, f"--job={name}", "--out", str(out), "--phase", args.phase,
                     "--shared-data", args.shared_data, "--threads", str(args.threads)],
              out / "logs" / f"{args.phase}-{name.replace(':', '-s')}.log") for name in names]
    if args.dry_run:
        for name, cmd, log in queue:
            assert ap.parse_args(cmd[2:]).job == name, cmd
            print(f"{name}\t{shlex.join(cmd)} > {log}")
        return
    if not args.table_only:
        stage(out)
        run_queue(queue, args.jobs, args.threads)
    text, results = table(out, args.phase, rows, seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table-{args.phase}.md").write_text(text + "\n")
    (out / f"table-{args.phase}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    if args.phase == "select" and not args.rows:
        pick = choose(results)
        (out / "chosen.json").write_text(json.dumps(pick, indent=2) + "\n")
        print("\nchosen (the pre-registered rule):\n" + json.dumps(pick, indent=2))


if __name__ == "__main__":
    main()
