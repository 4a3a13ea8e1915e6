"""The paper's job measured on the first GPU it meets, in under 5 minutes, with no download.

Random-initialised models of the paper's shapes (teacher: bert-base-cased's config; student:
bert-base-multilingual-cased's, its 119,547-row MLM head included), WordPiece tokenizers built from
the shared sample and filled up to those vocabulary sizes (or `--teacher-tokenizer` /
`--student-tokenizer`), and real sentence lengths: the Europarl en-fr sample of ../shared/data,
filtered as the paper filters (10-128 words). Writes one JSON file (every figure with its unit) and
prints a short table:

1. stage one: `cache-teacher` ÷ the bare teacher forward on the same sentences, for dtype=bf16 and
   fp16 (sentences/s of both; goal ≥ 0.95), and the share of the pipeline's time the teacher waited
   for tokenisation and for writing;
2. stage two at batch 32 per GPU, bf16: the cached step ÷ the student-only step (teacher features free)
   ÷ the online-teacher step; pairs/s, peak GPU memory, and the loader's share of the step time
   (data_wait) with 0, 1, 2 and 4 workers (goal: cached ÷ student-only ≤ 1.02 with the default 2);
3. the loader alone: pairs/s per process, to set against what a step consumes;
4. the largest batch per GPU that fits without grad_accum, and the memory of the MLM head on the
   masked rows only against full [B, L, V] logits;
5. what the paper's run costs: hours for 2M pairs × 7 languages × 15 epochs on 8 such GPUs, from the
   measured pairs/s, with the formula.

    python benchmarks/gpu_check.py                  # the paper's shapes; refuses without a GPU
    python benchmarks/gpu_check.py --tiny           # tiny shapes on the CPU (the test suite runs this)

docs/gpu.md says what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

PAPER_TEACHER = dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)    # bert-base-cased
PAPER_STUDENT = dict(vocab_size=119547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)    # mBERT
TINY_TEACHER = dict(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=160, type_vocab_size=2)
TINY_STUDENT = dict(TINY_TEACHER, vocab_size=2400)
PAPER_RUN = {"pairs_per_language": 2_000_000, "languages": 7, "epochs": 15, "gpus": 8}


def models(work: Path, shared: Path, tiny: bool, teacher_tok: str | None, student_tok: str | None) -> tuple[str, str]:
    """Teacher and student folders: random weights of the chosen shapes, tokenizers of their vocabulary size."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining, BertModel

    from mmkd.measure import english_sample
    from mmkd.tiny import wordpiece_tokenizer

    texts = english_sample(shared, 20000)
    par = shared / "parallel" / "ntrex128"
    multi = texts + [line for lang in ("fra", "deu", "spa", "bul", "hin", "arb", "zho_Hans")
                     for line in (par / f"newstest2019-ref.{lang}.txt").read_text().splitlines()]
    out = {}
    for name, shape, text, given, cls in (("teacher", TINY_TEACHER if tiny else PAPER_TEACHER, texts, teacher_tok, BertModel),
                                          ("student", TINY_STUDENT if tiny else PAPER_STUDENT, multi, student_tok,
                                           BertForPreTraining)):
        folder = work / name
        if given:
            tok = AutoTokenizer.from_pretrained(given)
            tok.save_pretrained(folder)
            shape = dict(shape, vocab_size=max(shape["vocab_size"], len(tok)))
        else:
            tok = wordpiece_tokenizer(text, min(shape["vocab_size"], 6000), folder, pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                      pad_to=shape["vocab_size"])
            shape = dict(shape, vocab_size=max(shape["vocab_size"], len(tok)))
        torch.manual_seed(0)
        cls(BertConfig(**shape)).save_pretrained(folder)
        out[name] = str(folder)
    return out["teacher"], out["student"]


def corpus(work: Path, shared: Path, tiny: bool) -> str:
    from mmkd.corpus import CorpusConfig, prepare_corpus

    e = shared / "parallel" / "europarl_v7_fr-en"
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(work / "data"), max_pairs=300 if tiny else 3000,
                                moses=(str(e / "europarl-v7.fr-en.en"), str(e / "europarl-v7.fr-en.fr"))),
                   progress=False)
    return str(work / "data")


def _sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stage_one(work: Path, teacher: str, data: str) -> dict:
    """cache-teacher against the bare forward of the same teacher on the same sentences."""
    from mmkd.cache import CacheConfig, build_cache
    from mmkd.corpus import open_corpus
    from mmkd.dist import process_state
    from mmkd.teacher import (collate, encode_prepared, length_grouped_batches, load_teacher, token_lengths,
                              tokenize_words)
    from mmkd.words import split_words

    c = open_corpus("en-fr", data)
    english, _ = c.rows(list(range(len(c))))
    model, tok = load_teacher(teacher, process_state().device)
    words = [split_words(s) for s in english]
    enc = tokenize_words(tok, words, 128)
    batches = [collate(tok, enc, idx, words, 128) for idx in length_grouped_batches(token_lengths(enc), 64)]
    encode_prepared(model, batches[0])                          # warm-up (kernels, allocator)
    _sync()
    t = time.perf_counter()
    for b in batches:                                           # tokenised beforehand: the forward alone
        encode_prepared(model, b)
    _sync()
    bare = len(english) / (time.perf_counter() - t)
    out = {"sentences": len(english), "bare_forward_sentences_per_second": round(bare, 1)}
    for dtype in ("bf16", "fp16"):
        t = time.perf_counter()
        (url,) = build_cache(CacheConfig(corpora=["en-fr"], teacher=teacher, out=str(work / f"cache-{dtype}"),
                                         data_dir=data, dtype=dtype, shard_size=1024), progress=False)
        seconds = time.perf_counter() - t
        summary = json.loads((Path(url) / "summary.json").read_text())
        pipe = summary["sentences_per_second"]
        waited = summary["waited_for_tokenizer_seconds"] + summary["waited_for_writer_seconds"]
        out[dtype] = {"cache_teacher_sentences_per_second": pipe, "cache_over_bare": round(pipe / bare, 3),
                      "teacher_wait_share": round(waited / summary["seconds"], 3),
                      "wall_seconds_with_model_load": round(seconds, 2)}
    out["goal"] = "cache_over_bare >= 0.95"
    return out


def _train(work: Path, name: str, student: str, data: str, cache: str | None, online: str | None, steps: int,
           batch: int, workers: int, free: bool = False) -> dict:
    import torch

    import mmkd.features as F
    from mmkd import settings as st
    from mmkd.config import TrainConfig
    from mmkd.measure import FreeTeacher, step_medians
    from mmkd.trainer import train

    cfg = dataclasses.replace(st.load(TrainConfig, "paper"), student=student, out=str(work / "runs" / name),
                              data_dir=data, batch_size=batch, max_steps=steps, num_workers=workers, log_with="none",
                              checkpoint_every=10 ** 6, verify_cache=False, cache=[cache] if cache else [],
                              online_teacher=online, corpora=["en-fr"] if online else [])
    real = F.open_features
    if free:
        F.open_features = lambda c, device="cpu": FreeTeacher(real(c, device))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        run = train(cfg, overwrite=True, progress=False)
    finally:
        F.open_features = real
    got = step_medians(run, skip=2)
    got["pairs_per_second"] = round(batch / got["median_step_seconds"], 2)
    got["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None
    return got


def stage_two(work: Path, student: str, teacher: str, data: str, steps: int, batch: int, workers: list[int]) -> dict:
    cache = str(work / "cache-bf16")
    out = {"batch_per_gpu": batch, "steps": steps}
    out["cached"] = {f"{w} workers": _train(work, f"cached-{w}", student, data, cache, None, steps, batch, w)
                     for w in workers}
    out["student_only"] = {f"{w} workers": _train(work, f"free-{w}", student, data, cache, None, steps, batch, w, True)
                           for w in workers}
    out["online"] = _train(work, "online", student, data, None, teacher, steps, batch, 0)
    default = "2 workers" if "2 workers" in out["cached"] else next(iter(out["cached"]))
    c, s = out["cached"][default], out["student_only"][default]
    out["cached_over_student_only"] = round(c["median_step_seconds"] / s["median_step_seconds"], 3)
    out["cached_over_online"] = round(c["median_step_seconds"] / out["online"]["median_step_seconds"], 3)
    out["goal"] = f"cached_over_student_only <= 1.02 with {default}"
    return out


def loader_alone(student: str, data: str, cache: str, batch: int, steps: int, workers: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from mmkd import settings as st
    from mmkd.config import TrainConfig
    from mmkd.features import open_cached
    from mmkd.schedule import BalancedSchedule
    from mmkd.step_data import StepData

    cfg = dataclasses.replace(st.load(TrainConfig, "paper"), batch_size=batch, cache=[cache])
    features = open_cached([cache])
    data_set = StepData(features, BalancedSchedule(features.sizes, batch, 0), 0, 1, cfg,
                        AutoTokenizer.from_pretrained(student))
    loader = torch.utils.data.DataLoader(data_set, batch_size=None, sampler=range(steps + 2), num_workers=workers,
                                         collate_fn=_same, prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it), next(it)                                          # workers started, first batches made
    t = time.perf_counter()
    n = sum(1 for _ in it)
    return {"workers": workers, "pairs_per_second": round(n * batch / (time.perf_counter() - t), 1)}


def _same(x):
    return x


def memory(student: str, teacher_hidden: int, batch: int, length: int, tiny: bool) -> dict:
    """Largest batch per device without grad_accum, and the MLM head on masked rows against full logits."""
    import torch
    from transformers import AutoModelForMaskedLM

    from mmkd import settings as st
    from mmkd.config import TrainConfig
    from mmkd.console import quiet_transformers
    from mmkd.model import build_model

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = st.load(TrainConfig, "paper")
    with quiet_transformers():
        student_model = AutoModelForMaskedLM.from_pretrained(student)
    model, terms = build_model(student_model, teacher_hidden, cfg)
    model = model.to(dev)
    vocab = model.student.config.vocab_size
    out = {"sequence_length": length, "vocabulary": vocab}
    masked = max(1, round(0.15 * length))
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        hidden = torch.randn(batch, length, model.student.config.hidden_size, device=dev, requires_grad=True)
        projection = model.student.get_output_embeddings()
        for name, rows in (("masked_rows_only", hidden[:, :masked].reshape(-1, hidden.shape[-1])), ("full_logits", hidden)):
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            logits = projection(rows)
            logits.float().logsumexp(-1).sum().backward()
            out[f"{name}_logits_gb"] = round(logits.numel() * 4 / 1e9, 3)      # as fp32 for the loss
            out[f"{name}_peak_gb"] = (round((torch.cuda.max_memory_allocated() - base) / 1e9, 3)
                                      if dev.type == "cuda" else None)
            del logits
            hidden.grad = None
    out["largest_batch_per_device"] = None if dev.type != "cuda" else _largest_batch(model, cfg, length, dev)
    out["note"] = "largest batch: bf16 autocast, 3 inputs a pair of this length, AdamW step" if dev.type == "cuda" \
        else "peak memory and largest batch are GPU figures: not measured on a CPU"
    return out


def _largest_batch(model, cfg, length: int, dev) -> int:
    """Doubling then bisecting the per-device batch until a full MMKD step runs out of memory."""
    import torch

    from mmkd.batching import StudentBatch
    from mmkd.optim import adamw, param_groups

    opt = adamw(param_groups(model, 0.01), 1e-5)
    vocab, hidden_t = model.student.config.vocab_size, model.teacher_senta_projector[0].in_features

    def fits(b: int) -> bool:
        try:
            ids = torch.randint(5, vocab, (b, length), device=dev)
            ones = torch.ones_like(ids)
            labels = torch.full_like(ids, -100)
            labels[:, 1:1 + max(1, round(0.15 * length))] = ids[:, 1:1 + max(1, round(0.15 * length))]
            words = length // 3
            batch = StudentBatch({
                "masked_pair": {"input_ids": ids, "attention_mask": ones, "labels": labels},
                "word_masked_pair": {"input_ids": ids, "attention_mask": ones,
                                     "word_pos": torch.arange(1, words + 1, device=dev).repeat(b, 1),
                                     "masked_words": torch.ones(b, words, dtype=torch.bool, device=dev),
                                     "teacher_words": torch.randn(b, words, hidden_t, device=dev),
                                     "teacher_word_mask": torch.ones(b, words, dtype=torch.bool, device=dev)},
                "sentence": {"input_ids": ids[:, :length // 2], "attention_mask": ones[:, :length // 2],
                             "teacher_cls": torch.randn(b, hidden_t, device=dev)}},
                {"sentence": list(range(b))})
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(batch, cfg.objectives)
                loss = sum(model.terms[o].loss(out, lambda t: t) for o in cfg.objectives)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return True
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            return False
        finally:
            torch.cuda.empty_cache()

    low, high = 0, 16
    while fits(high) and high < 4096:
        low, high = high, high * 2
    while high - low > 8:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def paper_cost(pairs_per_second_per_gpu: float) -> dict:
    p = PAPER_RUN
    pairs = p["pairs_per_language"] * p["languages"] * p["epochs"]
    hours = pairs / (pairs_per_second_per_gpu * p["gpus"]) / 3600
    return {**p, "pairs_per_second_per_gpu": pairs_per_second_per_gpu, "hours": round(hours, 1),
            "formula": f"{p['pairs_per_language']:,} pairs x {p['languages']} languages x {p['epochs']} epochs / "
                       f"({pairs_per_second_per_gpu} pairs/s x {p['gpus']} GPUs) / 3600 = {hours:.1f} h"}


def table(report: dict) -> str:
    s1, s2, m = report["stage_one"], report["stage_two"], report["memory"]
    default = s2["goal"].rsplit("with ", 1)[-1]
    lines = [f"mmkd gpu_check on {report['device']} ({report['shapes']} shapes)", "",
             "| figure | value | goal |", "|---|---|---|",
             f"| stage one, bare teacher forward | {s1['bare_forward_sentences_per_second']} sentences/s | |",
             *[f"| stage one, cache-teacher dtype={d} | {s1[d]['cache_teacher_sentences_per_second']} sentences/s "
               f"({s1[d]['cache_over_bare']} of bare; teacher waits {s1[d]['teacher_wait_share']:.0%}) | >= 0.95 |"
               for d in ("bf16", "fp16")],
             f"| stage two, cached / student-only step ({default}) | {s2['cached_over_student_only']} | <= 1.02 |",
             f"| stage two, cached / online-teacher step | {s2['cached_over_online']} | reported |",
             *[f"| cached step, {w} | {r['pairs_per_second']} pairs/s, data_wait {r['data_wait_fraction']:.1%}, "
               f"peak {r['peak_gpu_memory_gb']} GB | |" for w, r in s2["cached"].items()],
             f"| loader alone ({report['loader']['workers']} workers) | {report['loader']['pairs_per_second']} pairs/s | "
             f"> a step's pairs/s |",
             f"| largest batch per device | {m['largest_batch_per_device']} | |",
             f"| MLM head: masked rows / full logits | {m['masked_rows_only_logits_gb']} / {m['full_logits_logits_gb']} GB "
             f"(peak {m['masked_rows_only_peak_gb']} / {m['full_logits_peak_gb']} GB) | |",
             f"| the paper's run | {report['paper_run']['hours']} h on {PAPER_RUN['gpus']} GPUs | |", "",
             report["paper_run"]["formula"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, on the CPU if there is no GPU (the tests)")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON file")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per run (default 12; --tiny 4)")
    ap.add_argument("--workers", default=None, help="loader workers to compare (default 0,1,2,4; --tiny 0,2)")
    ap.add_argument("--teacher-tokenizer", default=None, help="a local tokenizer folder (default: built here)")
    ap.add_argument("--student-tokenizer", default=None, help="a local tokenizer folder (default: built here)")
    args = ap.parse_args()
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("error: gpu_check measures the paper's shapes on a GPU and none is visible (torch.cuda.is_available() "
              "is False); run it on a CUDA machine, or --tiny for the CPU smoke run", file=sys.stderr)
        sys.exit(2)
    steps = args.steps or (4 if args.tiny else 12)
    workers = [int(w) for w in (args.workers or ("0,2" if args.tiny else "0,1,2,4")).split(",")]
    batch = 8 if args.tiny else 32
    started = time.time()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {"device": device, "shapes": "tiny" if args.tiny else "paper (bert-base-cased teacher, mBERT student)",
              "torch": torch.__version__, "units": {"sentences_per_second": "1/s", "pairs_per_second": "1/s",
                                                    "memory": "GB (1e9 bytes)", "hours": "h", "seconds": "s"}}
    shared = Path(args.shared_data)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher, student = models(work, shared, args.tiny, args.teacher_tokenizer, args.student_tokenizer)
        data = corpus(work, shared, args.tiny)
        report["stage_one"] = stage_one(work, teacher, data)
        report["stage_two"] = stage_two(work, student, teacher, data, steps + 2, batch, workers)
        report["loader"] = loader_alone(student, data, str(work / "cache-bf16"), batch, steps,
                                        2 if 2 in workers else workers[-1])
        from transformers import AutoConfig
        report["memory"] = memory(student, AutoConfig.from_pretrained(teacher).hidden_size, batch,
                                  32 if args.tiny else 128, args.tiny)
        best = max(r["pairs_per_second"] for r in report["stage_two"]["cached"].values())
        report["paper_run"] = paper_cost(best)
    report["seconds"] = round(time.time() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten to {args.out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
