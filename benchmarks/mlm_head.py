"""The real student's 250k-vocabulary MLM head on this CPU: step time and peak memory. Prints JSON.

multilingual-e5-small (built by mmkd.supply) has 250,037 vocabulary rows tied to its word embeddings
(96M of its 118M parameters). TLM projects onto them. Each measurement runs in its own process (peak RSS):
- `tlm_masked_rows`: the student's masked-LM forward and backward on a batch of real pair inputs
  (`[CLS] s [SEP] t [SEP]`, Tatoeba en-fr/ar/zh), the vocabulary projection on the masked rows only
  (mmkd's path, model.Encodings.masked_logits);
- `tlm_full_logits`: the same with the projection on every position ([B, L, V] logits, the plain
  *ForMaskedLM forward);
- `adamw_fused` / `adamw_foreach`: one AdamW update of all the student's parameters (random gradients),
  torch's fused kernel (what mmkd.optim uses) against its default multi-tensor loop, median of 5 after 1;
- `mmkd_step`: a whole `mmkd train` step (four objectives, fused AdamW over all 118M parameters)
  from the demo's MiniLM cache, median over the steps after the first 2.

    python benchmarks/mlm_head.py --shared-data ../shared/data [--batch-size 35 --tlm-batch-size 35 --steps 8]

A part that dies (the full logits of a large batch can exceed the memory left) is reported as such.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def tlm(shared: Path, batch: int, repeats: int, full: bool) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from mmkd.batching import PairKey, Part, StudentBatch, build_student_batch
    from mmkd.cache.reader import Sentences
    from mmkd.model import Encodings
    from mmkd.objectives.inputs import MASKED_PAIR, MaskingConfig
    from mmkd.supply import model_folder
    from mmkd.words import split_words

    e5 = str(model_folder("multilingual-e5-small"))
    tok = AutoTokenizer.from_pretrained(e5)
    student = AutoModelForMaskedLM.from_pretrained(e5)
    rows = []
    for code in ("fra", "ara", "zho"):
        rows += [r.split("\t") for r in (shared / "parallel/tatoeba_challenge" / f"eng-{code}.tsv").read_text(
            encoding="utf-8").splitlines()[:batch]]
    rows = rows[:batch]
    words = [split_words(en) for en, _ in rows]
    keys = [PairKey(0, i, i) for i in range(len(rows))]
    read = Sentences(words, [en for en, _ in rows], [x for _, x in rows],
                     [np.zeros((len(w), 1), np.float32) for w in words], [np.zeros(1, np.float32) for _ in words], None)
    batch_ = build_student_batch(tok, Part(keys, keys, read, read), [MASKED_PAIR],
                                 MaskingConfig(segments=False))
    mine = batch_.inputs["masked_pair"]
    selected = mine.labels != -100
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        if full:
            logits = student(input_ids=mine.input_ids, attention_mask=mine.attention_mask).logits
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     mine.labels.reshape(-1), ignore_index=-100)
        else:
            logits = Encodings(student, StudentBatch(batch_.inputs, batch_.keys)).masked_logits("masked_pair", selected)
            loss = torch.nn.functional.cross_entropy(logits.float(), mine.labels[selected])
        loss.backward()
        student.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {"batch": len(rows), "padded_length": int(mine.input_ids.shape[1]), "masked_rows": int(selected.sum()),
            "logits_mb": round(logits.numel() * 4 / 1e6, 1), "median_seconds": round(statistics.median(times[1:]), 3),
            "peak_rss_mb": _rss_mb()}


def adamw(fused: bool, repeats: int = 6) -> dict:
    import torch
    from transformers import AutoModelForMaskedLM

    from mmkd.supply import model_folder

    student = AutoModelForMaskedLM.from_pretrained(str(model_folder("multilingual-e5-small")))
    params = [p for p in student.parameters() if p.requires_grad]
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-5, fused=fused, foreach=None if fused else True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return {"parameters": sum(p.numel() for p in params), "median_seconds": round(statistics.median(times[1:]), 3),
            "peak_rss_mb": _rss_mb()}


def mmkd_step(shared: Path, batch: int, steps: int, work: Path) -> dict:
    import dataclasses

    from mmkd import settings as st
    from mmkd.config import TrainConfig
    from mmkd.demo import DemoConfig, prepare
    from mmkd.measure import step_medians
    from mmkd.trainer import train

    demo = DemoConfig(out=str(work / "demo"))
    cfg = st.load(TrainConfig, "demo")
    _, student, cache, _ = prepare(demo, cfg, work / "demo", False, lambda m: None)
    cfg = dataclasses.replace(cfg, cache=[cache], student=student, out=str(work / "run"), data_dir=str(work / "demo/data"),
                              max_steps=steps, batch_size=batch, num_workers=0, log_with="none",
                              checkpoint_every=10 ** 6, head_warmup_steps=0)
    run = train(cfg, progress=False)
    return {**step_medians(run), "batch": batch, "peak_rss_mb": _rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--batch-size", type=int, default=35)
    ap.add_argument("--tlm-batch-size", type=int, default=None, help="pairs of the two TLM parts (default: --batch-size)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shared = Path(args.shared_data)
    if args.part:
        with tempfile.TemporaryDirectory() as tmp:
            if args.part == "mmkd_step":
                got = mmkd_step(shared, args.batch_size, args.steps, Path(tmp))
            elif args.part.startswith("adamw"):
                got = adamw(fused=args.part == "adamw_fused")
            else:
                got = tlm(shared, args.tlm_batch_size or args.batch_size, 5, full=args.part == "tlm_full_logits")
        print(json.dumps(got))
        return
    import torch

    report = {"student": "multilingual-e5-small (250,037 rows)", "device": "cpu", "threads": torch.get_num_threads()}
    for part in ("tlm_masked_rows", "tlm_full_logits", "adamw_fused", "adamw_foreach", "mmkd_step"):
        out = subprocess.run([sys.executable, __file__, "--part", part, "--shared-data", args.shared_data,
                              "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                              "--tlm-batch-size", str(args.tlm_batch_size or args.batch_size)],
                             capture_output=True, text=True)
        if out.returncode:
            why = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit {out.returncode}"
            report[part] = {"failed": why + (" (out of memory?)" if out.returncode == -9 else ""),
                            "stderr_tail": out.stderr.strip().splitlines()[-1:]}
        else:
            report[part] = json.loads(out.stdout.strip().splitlines()[-1])

    def ratio(a: str, b: str):
        ok = "median_seconds" in report[a] and "median_seconds" in report[b]
        return round(report[a]["median_seconds"] / report[b]["median_seconds"], 2) if ok else None

    report["full_over_masked_seconds"] = ratio("tlm_full_logits", "tlm_masked_rows")
    report["foreach_over_fused_seconds"] = ratio("adamw_foreach", "adamw_fused")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
