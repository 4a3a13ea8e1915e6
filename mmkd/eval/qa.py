"""XQuAD: extractive QA, zero-shot (paper 4.2). Fine-tune on English SQuAD-format data, keep the
best epoch on English dev (the last 10% of the training questions unless dev_file is given:
SQuAD v1.1 dev is where XQuAD comes from, so it must not be used), test on XQuAD languages.

Contexts longer than the window are split into strided windows (max length 384, stride 128);
every window proposes its n-best start/end pairs, and the highest-scoring valid span over all
windows of a question is its answer. Questions are cut to their first 64 tokens (BERT's SQuAD
recipe), and always to fewer than the window minus the overlap, so that every window holds more
context than it repeats: an English tokenizer can split one Arabic or Hindi question into 180
pieces. Every dev and test set is featurized before fine-tuning starts, so bad data fails at once. XTREME's recipe: lr 3e-5, 3 epochs, batch 32, warm-up 10%,
weight decay 1e-4.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch

from mmkd.eval.data import EvalDataError, QAExample, XQUAD_ALL, XQUAD_LANGUAGES, check_languages, load_qa
from mmkd.eval.finetune import autocast, check_max_length, device, fine_tune, resolve_precision, seed_everything
from mmkd.eval.metrics import MLQA_LANGUAGES, squad_scores
from mmkd.eval.settings import EvalConfig
from mmkd.hf import load, load_tokenizer

DEFAULTS = {"epochs": 3.0, "lr": 3e-5, "max_length": 384, "weight_decay": 1e-4, "warmup_ratio": 0.1}


def question_limit(tokenizer, max_length: int, stride: int, max_question_length: int) -> int:
    """The most question tokens a window may hold: max_question_length, and fewer than the window
    minus the overlap and the special tokens (the tokenizer cannot stride over a shorter context)."""
    return max(1, min(max_question_length, max_length - stride - tokenizer.num_special_tokens_to_add(pair=True) - 1))


def cut_questions(tokenizer, examples: list[QAExample], limit: int) -> tuple[list[QAExample], int]:
    """Each question cut, at a token boundary of the original text, to at most `limit` tokens;
    returns the examples and how many were cut."""
    out, cut = [], 0
    for ex in examples:
        question = ex.question
        enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        keep = limit
        while len(enc["input_ids"]) > limit:     # a prefix can re-tokenize longer: cut one more token
            question = question[:enc["offset_mapping"][keep - 1][1]]
            enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
            keep -= 1
        cut += question != ex.question
        out.append(ex if question == ex.question else dataclasses.replace(ex, question=question))
    return out, cut


def featurize(tokenizer, examples: list[QAExample], max_length: int, stride: int, train: bool) -> dict:
    enc = tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length")
    sample = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    feats = {k: torch.tensor(v) for k, v in enc.items()}
    feats["example"] = torch.tensor(sample)
    if train:
        starts, ends = [], []
        for i, ex_i in enumerate(sample):
            ex = examples[ex_i]
            a = ex.answers[0]
            s_char, e_char = a["answer_start"], a["answer_start"] + len(a["text"])
            seq = enc.sequence_ids(i)
            ctx = [t for t, s in enumerate(seq) if s == 1]
            s_tok = e_tok = 0   # answer not in this window: point at [CLS]
            if ctx and offsets[i][ctx[0]][0] <= s_char and offsets[i][ctx[-1]][1] >= e_char:
                s_tok = next(t for t in ctx if offsets[i][t][1] > s_char)
                e_tok = next(t for t in reversed(ctx) if offsets[i][t][0] < e_char)
            starts.append(s_tok)
            ends.append(e_tok)
        feats["start_positions"], feats["end_positions"] = torch.tensor(starts), torch.tensor(ends)
    else:
        # Keep offsets only for context tokens, so decoding can never pick a question token.
        feats["offsets"] = [[o if enc.sequence_ids(i)[t] == 1 else None for t, o in enumerate(offs)]
                            for i, offs in enumerate(offsets)]
    return feats


@torch.no_grad()
def predict(model, feats: dict, examples: list[QAExample], n_best: int, max_answer_length: int,
            batch_size: int = 32, precision: str = "no") -> dict[str, str]:
    """The best span of each example, from its windows `feats` (featurize(..., train=False))."""
    dev = device()
    inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in feats]
    best: dict[int, tuple[float, str]] = {}
    for i in range(0, len(feats["input_ids"]), batch_size):
        with autocast(dev, precision):
            out = model(**{k: feats[k][i:i + batch_size].to(dev) for k in inputs})
        starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for j in range(len(starts)):
            f = i + j
            ex_i = int(feats["example"][f])
            offs = feats["offsets"][f]
            context = examples[ex_i].context
            for s in np.argsort(starts[j])[::-1][:n_best]:
                for e in np.argsort(ends[j])[::-1][:n_best]:
                    if offs[s] is None or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(starts[j][s] + ends[j][e])
                    if ex_i not in best or score > best[ex_i][0]:
                        best[ex_i] = (score, context[offs[s][0]:offs[e][1]])
    return {ex.id: best.get(i, (0.0, ""))[1] for i, ex in enumerate(examples)}


def _answers(examples: list[QAExample]) -> dict[str, list[str]]:
    return {e.id: [a["text"] for a in e.answers] for e in examples}


def check(cfg: EvalConfig) -> tuple[list[str], dict]:
    """The languages and hyper-parameters of an XQuAD evaluation, checked before any data is read."""
    hp = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in DEFAULTS.items()}
    languages = check_languages(cfg.languages or list(XQUAD_LANGUAGES), XQUAD_ALL, "xquad")
    outside = [lang for lang in languages if lang not in MLQA_LANGUAGES]
    if cfg.qa_scoring == "mlqa" and outside:      # before any fine-tuning, not after it
        raise EvalDataError(f"qa_scoring=mlqa: MLQA's script scores {', '.join(MLQA_LANGUAGES)} only, not "
                            f"{', '.join(outside)}; use qa_scoring=squad (XTREME's) or drop those languages")
    if cfg.doc_stride >= hp["max_length"] // 2:
        raise EvalDataError(f"doc_stride={cfg.doc_stride} must be under half of max_length={hp['max_length']} "
                            "(the window also holds the question)")
    return languages, hp


def _load(cfg: EvalConfig, languages: list[str]) -> tuple[list[QAExample], list[QAExample], dict]:
    """English training rows, English dev rows (dev_file, else a tenth of the training rows) and
    each language's test rows."""
    train = load_qa(None, cfg.train_file, cfg.data_dir, cfg.max_train_examples, cfg.train_hub_revision)
    if cfg.dev_file:
        dev_en = load_qa(None, cfg.dev_file, None, cfg.max_eval_examples)
    else:
        cut = max(1, len(train) // 10)
        train, dev_en = train[:-cut], train[-cut:]
    return train, dev_en, {lang: load_qa(lang, None, cfg.data_dir, cfg.max_eval_examples, cfg.hub_revision)
                           for lang in languages}


def _cut(tokenizer, sets: dict[str, list[QAExample]], limit: int) -> dict[str, list[QAExample]]:
    """Every question cut to `limit` tokens, saying how many were."""
    out = {}
    for name, examples in sets.items():
        out[name], cut = cut_questions(tokenizer, examples, limit)
        if cut:
            print(f"mmkd: xquad {name}: {cut} of {len(examples)} questions cut to {limit} tokens "
                  "(max_question_length, max_length, doc_stride)", file=sys.stderr)
    return out


def run_seed(cfg: EvalConfig, seed: int) -> dict:
    from transformers import AutoModelForQuestionAnswering   # lazy: transformers, see mmkd/__init__.py
    languages, hp = check(cfg)
    mixed = resolve_precision(cfg.mixed_precision)
    train, dev_en, tests = _load(cfg, languages)
    seed_everything(seed)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load(AutoModelForQuestionAnswering, cfg.model, "qa", cfg.trust_remote_code, tokenizer=tokenizer)
    check_max_length(model, hp["max_length"])
    limit = question_limit(tokenizer, hp["max_length"], cfg.doc_stride, cfg.max_question_length)
    tests = _cut(tokenizer, {"train": train, "dev-en": dev_en, **tests}, limit)
    train, dev_en = tests.pop("train"), tests.pop("dev-en")
    windows = {name: featurize(tokenizer, examples, hp["max_length"], cfg.doc_stride, train=False)
               for name, examples in [("dev-en", dev_en), *tests.items()]}
    feats = featurize(tokenizer, train, hp["max_length"], cfg.doc_stride, train=True)
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions") if k in feats]
    n = len(feats["input_ids"])
    rng = np.random.default_rng(seed)

    def batches(epoch):
        order = rng.permutation(n)
        for i in range(0, n, cfg.batch_size):
            idx = torch.from_numpy(order[i:i + cfg.batch_size])
            yield {k: feats[k][idx] for k in names}

    def run(name, examples):
        return predict(model, windows[name], examples, cfg.n_best, cfg.max_answer_length, precision=mixed)

    def evaluate():
        return {"dev-en": squad_scores(run("dev-en", dev_en), _answers(dev_en), "en", cfg.qa_scoring)["f1"]}

    states, info = fine_tune(model, batches, -(-n // cfg.batch_size), hp["epochs"], hp["lr"], hp["weight_decay"],
                             hp["warmup_ratio"], evaluate, ["dev-en"], desc=f"xquad seed {seed}",
                             precision=mixed)
    model.load_state_dict(states["dev-en"])
    result = {"seed": seed, "train_examples": len(train), "dev_en_examples": len(dev_en), **info,
              "test": {}, "test_exact_match": {}, "mixed_precision": mixed,
              "hyper_parameters": {**hp, "batch_size": cfg.batch_size, "question_tokens": limit},
              "scoring": cfg.qa_scoring, "predictions": {}}
    for lang, ex in tests.items():
        predicted = run(lang, ex)
        scores = squad_scores(predicted, _answers(ex), lang, cfg.qa_scoring)
        result["test"][lang] = scores["f1"]
        result["test_exact_match"][lang] = scores["exact_match"]
        result["predictions"][lang] = {e.id: predicted.get(e.id, "") for e in ex}
    return result
