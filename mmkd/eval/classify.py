"""XNLI and PAWS-X: sentence-pair classification, zero-shot (paper 4.2).

Fine-tune on English training pairs, keep the epoch with the best English dev accuracy, test on
every target language. When the training file is also the English dev file (the shared samples
only have XNLI dev-en as English training data) the last 10% of it become the dev set.
XTREME's mBERT recipe: lr 2e-5, 5 epochs, batch 32, max length 128.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmkd.eval.data import (
    EvalDataError,
    PAWSX,
    PairExample,
    PairTask,
    XNLI,
    check_languages,
    load_pair_split,
    load_pair_train,
)
from mmkd.eval.finetune import autocast, check_max_length, device, fine_tune, resolve_precision, seed_everything
from mmkd.eval.metrics import accuracy
from mmkd.eval.settings import EvalConfig
from mmkd.hf import load, load_tokenizer

TASKS = {"xnli": XNLI, "pawsx": PAWSX}
DEFAULTS = {"epochs": 5.0, "lr": 2e-5, "max_length": 128, "weight_decay": 0.0, "warmup_ratio": 0.0}


def _encode(tokenizer, examples: list[PairExample], max_length: int):
    enc = tokenizer([e.a for e in examples], [e.b for e in examples], truncation=True, max_length=max_length)
    return enc, torch.tensor([e.label for e in examples])


def _batches(tokenizer, enc, labels, batch_size: int, order: np.ndarray):
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        feats = [{k: enc[k][j] for k in enc.keys()} for j in idx]
        batch = tokenizer.pad(feats, return_tensors="pt")
        batch["labels"] = labels[idx]
        yield dict(batch)


@torch.no_grad()
def predict(model, tokenizer, examples: list[PairExample], max_length: int, batch_size: int = 64,
            precision: str = "no") -> list[int]:
    enc, labels = _encode(tokenizer, examples, max_length)
    dev = device()
    preds = []
    for batch in _batches(tokenizer, enc, labels, batch_size, np.arange(len(examples))):
        batch.pop("labels")
        with autocast(dev, precision):
            logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits
        preds += logits.argmax(-1).tolist()
    return preds


def check(cfg: EvalConfig) -> list[str]:
    """The languages of an XNLI or PAWS-X evaluation, checked before any data is read."""
    task: PairTask = TASKS[cfg.task]
    if cfg.test_split not in ("test", "dev"):
        raise EvalDataError(f"test_split={cfg.test_split!r}: choose test or dev")
    return check_languages(cfg.languages or list(task.default_languages), task.all_languages, task.name)


@dataclass
class _Data:
    train: list[PairExample]
    dev_en: list[PairExample]
    tests: dict[str, list[PairExample]]
    oracle_devs: dict[str, list[PairExample]]


def _load(cfg: EvalConfig, task: PairTask, languages: list[str]) -> _Data:
    """English training and dev rows (dev: dev_file, else a tenth of a training file that is XNLI's
    dev-en, else dev-en), each language's test rows from test_offset, and (oracle) their dev rows."""
    train = load_pair_train(task, cfg.train_file, cfg.max_train_examples, cfg.data_dir, cfg.hub_revision)
    if cfg.dev_file:
        dev_en = load_pair_train(task, cfg.dev_file, cfg.max_eval_examples)
    elif cfg.data_dir and cfg.train_file and (_same(cfg.train_file, f"{cfg.data_dir}/{task.folder}/dev-en.tsv")):
        cut = max(1, len(train) // 10)
        train, dev_en = train[:-cut], train[-cut:]
    else:
        dev_en = load_pair_split(task, "en", "dev", cfg.data_dir, cfg.max_eval_examples, cfg.hub_revision)
    upto = cfg.test_offset + cfg.max_eval_examples if cfg.max_eval_examples else None
    tests = {lang: load_pair_split(task, lang, cfg.test_split, cfg.data_dir, upto, cfg.hub_revision)[cfg.test_offset:]
             for lang in languages}
    empty = [lang for lang, ex in tests.items() if not ex]
    if empty:
        raise EvalDataError(f"test_offset={cfg.test_offset}: no {task.name} {cfg.test_split} examples left for "
                            f"{', '.join(empty)}")
    oracle_devs = ({lang: load_pair_split(task, lang, "dev", cfg.data_dir, cfg.max_eval_examples, cfg.hub_revision)
                    for lang in languages if lang != "en"} if cfg.oracle else {})
    return _Data(train, dev_en, tests, oracle_devs)


def run_seed(cfg: EvalConfig, seed: int) -> dict:
    from transformers import AutoModelForSequenceClassification   # lazy: transformers, see mmkd/__init__.py
    task: PairTask = TASKS[cfg.task]
    hp = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in DEFAULTS.items()}
    mixed = resolve_precision(cfg.mixed_precision)
    data = _load(cfg, task, check(cfg))
    seed_everything(seed)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load(AutoModelForSequenceClassification, cfg.model, "classifier", cfg.trust_remote_code,
                 tokenizer=tokenizer, num_labels=len(task.labels))
    check_max_length(model, hp["max_length"])
    enc, labels = _encode(tokenizer, data.train, hp["max_length"])
    rng = np.random.default_rng(seed)

    def score(rows):
        return accuracy(predict(model, tokenizer, rows, hp["max_length"], precision=mixed), [e.label for e in rows])

    def evaluate():
        return {"dev-en": score(data.dev_en), **{f"dev-{lang}": score(ex) for lang, ex in data.oracle_devs.items()}}

    steps = -(-len(data.train) // cfg.batch_size)
    keep = ["dev-en"] + [f"dev-{lang}" for lang in data.oracle_devs]
    states, info = fine_tune(model, lambda epoch: _batches(tokenizer, enc, labels, cfg.batch_size,
                                                           rng.permutation(len(data.train))),
                             steps, hp["epochs"], hp["lr"], hp["weight_decay"], hp["warmup_ratio"], evaluate,
                             keep, desc=f"{task.name} seed {seed}", precision=mixed)
    result = {"seed": seed, "train_examples": len(data.train), "dev_en_examples": len(data.dev_en),
              "test_examples": {lang: len(ex) for lang, ex in data.tests.items()}, **info, "test": {},
              "mixed_precision": mixed, "predictions": {}}
    model.load_state_dict(states["dev-en"])
    for lang, ex in data.tests.items():
        predicted = predict(model, tokenizer, ex, hp["max_length"], precision=mixed)
        result["test"][lang] = accuracy(predicted, [e.label for e in ex])
        result["predictions"][lang] = [task.labels[p] for p in predicted]
    if data.oracle_devs:
        result["oracle_test"] = {}
        for lang, ex in data.tests.items():
            model.load_state_dict(states.get(f"dev-{lang}", states["dev-en"]))
            result["oracle_test"][lang] = score(ex)
    result["hyper_parameters"] = {**hp, "batch_size": cfg.batch_size}
    return result


def _same(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()
