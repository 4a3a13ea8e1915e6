"""Translation retrieval: for each sentence, is its nearest neighbour (cosine) among the other
language's sentences its own translation? Both directions, [CLS] and mean pooling of the last
layer, no fine-tuning: cheap on a CPU and the most direct measure of cross-lingual alignment.

Inputs: TSV pairs `en<TAB>x` (Tatoeba) or two line-aligned files (FLORES/NTREX/TICO layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmkd.eval.data import EvalDataError
from mmkd.eval.finetune import autocast, device, resolve_precision
from mmkd.eval.metrics import alignment_infonce, retrieval_accuracy
from mmkd.hf import load, load_tokenizer
from mmkd.lines import split_lines


@dataclass
class ParallelSet:
    name: str
    english: list[str]
    other: list[str]


def read_parallel(spec: str, limit: int | None = None) -> ParallelSet:
    """`NAME=EN_FILE,X_FILE` (line-aligned) or `NAME=PAIRS.tsv` or just a TSV path."""
    name, _, paths = spec.rpartition("=") if "=" in spec else ("", "", spec)
    files = [Path(p) for p in paths.split(",")]
    for f in files:
        if not f.is_file():
            raise EvalDataError(f"{f}: no such file")
    if len(files) == 1:
        en, x = [], []
        for i, line in enumerate(_lines(files[0]), start=1):
            cols = line.split("\t")
            if len(cols) != 2:
                raise EvalDataError(f"{files[0]} line {i}: expected en<TAB>x")
            en.append(cols[0])
            x.append(cols[1])
    elif len(files) == 2:
        en, x = _lines(files[0]), _lines(files[1])
        if len(en) != len(x):
            raise EvalDataError(f"{files[0]} has {len(en)} lines but {files[1]} has {len(x)}")
    else:
        raise EvalDataError(f"{spec}: give one TSV or two line-aligned files separated by a comma")
    keep = [(a, b) for a, b in zip(en, x) if a.strip() and b.strip()]
    seen, uniq = set(), []
    for a, b in keep:   # duplicates would make "the right candidate" ambiguous
        if a not in seen:
            seen.add(a)
            uniq.append((a, b))
    uniq = uniq[:limit] if limit else uniq
    if not uniq:
        raise EvalDataError(f"{spec}: no sentence pairs in it (empty, or every line blank)")
    return ParallelSet(name or files[-1].stem, [a for a, _ in uniq], [b for _, b in uniq])


def _lines(path: Path) -> list[str]:
    """A UTF-8 text file's lines; UTF-16 or binary data is one line naming the file and the fix."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        raise EvalDataError(f"{path}: UTF-16 (or binary) data, not UTF-8 text; convert it first, e.g. "
                            f"iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}")
    try:
        return split_lines(data.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise EvalDataError(f"{path} line {line}: invalid UTF-8 ({e.reason})") from None


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], batch_size: int = 64, max_length: int = 128,
          precision: str = "auto") -> dict[str, torch.Tensor]:
    """{"cls": [N, H], "mean": [N, H]} from the last hidden layer, L2-normalised. Sentences are
    batched by length (little padding) and returned in their input order. `precision`: as
    mixed_precision (auto: bf16 on GPUs that have it, fp16 on others, fp32 on CPU)."""
    dev = device()
    precision = resolve_precision(precision)
    lengths = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    cls, mean = [], []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer([sentences[j] for j in order[i:i + batch_size]], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt").to(dev)
        with autocast(dev, precision):
            h = model(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        cls.append(h[:, 0])
        mean.append((h * m).sum(1) / m.sum(1))
    inverse = torch.from_numpy(np.argsort(order, kind="stable"))
    norm = torch.nn.functional.normalize
    return {"cls": norm(torch.cat(cls)[inverse], dim=-1).cpu(), "mean": norm(torch.cat(mean)[inverse], dim=-1).cpu()}


def retrieval_scores(model, tokenizer, data: ParallelSet, precision: str = "auto") -> dict[str, float]:
    a = embed(model, tokenizer, data.english, precision=precision)
    b = embed(model, tokenizer, data.other, precision=precision)
    out = {}
    for pooling in ("cls", "mean"):
        sim = (b[pooling] @ a[pooling].T).numpy()
        out[f"{pooling}_x2en"] = retrieval_accuracy(sim)
        out[f"{pooling}_en2x"] = retrieval_accuracy(sim.T)
        out[pooling] = (out[f"{pooling}_x2en"] + out[f"{pooling}_en2x"]) / 2
        out[f"{pooling}_infonce"] = alignment_infonce(sim)
    return out


def run_retrieval(model_name: str, specs: list[str], limit: int | None = None, trust_remote_code: bool = False,
                  precision: str = "auto") -> dict:
    from transformers import AutoModel   # lazy: transformers, see mmkd/__init__.py
    if not specs:
        raise EvalDataError("give at least one --pairs NAME=EN_FILE,X_FILE or --pairs FILE.tsv")
    sets = [read_parallel(s, limit) for s in specs]
    tokenizer = load_tokenizer(model_name, trust_remote_code)
    model = load(AutoModel, model_name, "encoder", trust_remote_code, tokenizer=tokenizer).to(device()).eval()
    per_set = {s.name: {"n": len(s.english), **retrieval_scores(model, tokenizer, s, precision)} for s in sets}
    return {"task": "retrieval", "model": model_name, "sets": per_set,
            "average": {k: float(np.mean([v[k] for v in per_set.values()]))
                        for k in ("cls", "mean", "cls_infonce", "mean_infonce")}}
