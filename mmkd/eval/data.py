"""Evaluation data: local files in the XTREME formats, or Hugging Face dataset names.

Local layout (`--data-dir DIR`, XTREME's): `DIR/xnli/{dev,test}-{lang}.tsv` (premise, hypothesis,
label), `DIR/pawsx/{dev,test}-{lang}.tsv` (sentence1, sentence2, label), `DIR/xquad/xquad.{lang}.json`
(SQuAD v1.1 JSON). English training data: `train_file` (XTREME TSV or SQuAD JSON), else
`DIR/xnli/train-en.tsv`, `DIR/pawsx/train-en.tsv`, `DIR/squad/train-v1.1.json` when present.
Without `--data-dir` the hub datasets are used, by their namespaced ids (mmkd/hub_data.py):
`facebook/xnli`, `google-research-datasets/paws-x` (configs = languages; the `en` train split is
MultiNLI / PAWS), `rajpurkar/squad` (train) and `google/xquad` (`xquad.{lang}`, validation), each
read at the one commit its revision resolved to (`hub_sources`).
A test file without labels is an error, never a silent 33%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmkd.errors import MMKDError
from mmkd.hub_data import EVAL_DATASETS
from mmkd.hub_data import load as hub_load
from mmkd.hub_data import record, resolve
from mmkd.lines import split_lines


class EvalDataError(MMKDError):
    pass


@dataclass(frozen=True)
class PairTask:
    name: str
    folder: str
    labels: tuple[str, ...]
    default_languages: tuple[str, ...]
    all_languages: tuple[str, ...]
    hf_name: str
    hf_columns: tuple[str, str]
    aliases: tuple[tuple[str, str], ...] = ()


XNLI = PairTask("xnli", "xnli", ("entailment", "neutral", "contradiction"),
                ("ar", "bg", "de", "en", "es", "fr", "hi", "zh"),
                ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
                EVAL_DATASETS["xnli"], ("premise", "hypothesis"), aliases=(("contradictory", "contradiction"),))
PAWSX = PairTask("pawsx", "pawsx", ("0", "1"), ("de", "en", "es", "fr", "zh"),
                 ("de", "en", "es", "fr", "ja", "ko", "zh"), EVAL_DATASETS["pawsx"],
                 ("sentence1", "sentence2"))
XQUAD_LANGUAGES = ("ar", "de", "en", "es", "hi", "zh")
XQUAD_ALL = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")


@dataclass
class PairExample:
    a: str
    b: str
    label: int


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[dict]    # [{"text": str, "answer_start": int}]


def check_languages(languages: list[str], allowed: tuple[str, ...], task: str) -> list[str]:
    bad = [lang for lang in languages if lang not in allowed]
    if bad:
        raise EvalDataError(f"{task}: unknown language code {bad[0]!r}; {task} has {', '.join(allowed)}")
    return languages


def read_text(path: Path) -> str:
    """The whole of a UTF-8 evaluation file; UTF-16, Latin-1 or any invalid UTF-8 is refused naming
    the file and the line."""
    if not path.is_file():
        raise EvalDataError(f"{path}: no such file")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        raise EvalDataError(f"{path}: UTF-16 (or binary) data, not UTF-8 text; convert it first, e.g. "
                            "iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise EvalDataError(f"{path} line {line}: invalid UTF-8 at byte {e.start} ({e.reason}); is it Latin-1? "
                            "convert it first, e.g. iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8") from None


def read_pair_tsv(path: Path, task: PairTask, limit: int | None = None) -> list[PairExample]:
    alias = dict(task.aliases)
    out = []
    for i, line in enumerate(split_lines(read_text(path)), start=1):
        cols = line.split("\t")
        if len(cols) == 2:
            raise EvalDataError(f"{path} line {i}: no label column (XTREME strips the XNLI/PAWS-X test "
                                "labels); evaluate on a labelled copy")
        if len(cols) != 3:
            raise EvalDataError(f"{path} line {i}: expected 3 tab-separated columns, found {len(cols)}")
        label = alias.get(cols[2].strip(), cols[2].strip())
        if label not in task.labels:
            if i == 1 and label.lower() in ("label", "gold_label"):
                continue   # a header line
            raise EvalDataError(f"{path} line {i}: label {cols[2]!r} is not one of {', '.join(task.labels)}")
        out.append(PairExample(cols[0], cols[1], task.labels.index(label)))
        if limit and len(out) >= limit:
            break
    if not out:
        raise EvalDataError(f"{path}: no examples")
    return out


def load_pair_split(task: PairTask, lang: str, split: str, data_dir: str | None, limit: int | None,
                    revision: str = "main") -> list[PairExample]:
    """split: dev or test (local names) / validation or test (hub, at `revision`)."""
    if data_dir:
        return read_pair_tsv(Path(data_dir) / task.folder / f"{split}-{lang}.tsv", task, limit)
    hub_split = {"dev": "validation", "test": "test", "train": "train"}[split]
    ds = hub_load(task.hf_name, lang, hub_split, None, revision)
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    a, b = task.hf_columns
    out = [PairExample(r[a], r[b], int(r["label"])) for r in ds]
    if any(e.label < 0 for e in out):
        raise EvalDataError(f"{task.hf_name}/{lang} {hub_split}: unlabelled rows (label -1)")
    return out


def load_pair_train(task: PairTask, train_file: str | None, limit: int | None,
                    data_dir: str | None = None, revision: str = "main") -> list[PairExample]:
    """English training pairs: `train_file`, else DATA_DIR/<task>/train-en.tsv (XTREME's layout),
    else the hub's English train split."""
    if train_file:
        return read_pair_tsv(Path(train_file), task, limit)
    if data_dir and (Path(data_dir) / task.folder / "train-en.tsv").is_file():
        return read_pair_tsv(Path(data_dir) / task.folder / "train-en.tsv", task, limit)
    return load_pair_split(task, "en", "train", None, limit, revision)


def read_squad(path: Path, limit: int | None = None) -> list[QAExample]:
    """SQuAD v1.1 JSON, every level checked: `data` → articles → `paragraphs` → `context` and `qas` →
    `id`, `question`, `answers` → `text` and `answer_start` (an int inside the context)."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{path} line {e.lineno}: not JSON ({e.msg})") from None
    except RecursionError:
        raise EvalDataError(f"{path}: nested too deeply to be SQuAD JSON") from None

    def need(value, kind, where: str):
        if not isinstance(value, kind) or isinstance(value, bool):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise EvalDataError(f"{path}: {where} is {type(value).__name__ if value is not None else 'missing'}, "
                                f"not {name}; not SQuAD v1.1 JSON")
        return value

    out = []
    articles = need(need(data, dict, "the top level").get("data"), list, "'data'")
    for a, article in enumerate(articles):
        for p, para in enumerate(need(need(article, dict, f"data[{a}]").get("paragraphs"), list,
                                      f"data[{a}].paragraphs")):
            where = f"data[{a}].paragraphs[{p}]"
            context = need(need(para, dict, where).get("context"), str, f"{where}.context")
            for q, qa in enumerate(need(para.get("qas"), list, f"{where}.qas")):
                at = f"{where}.qas[{q}]"
                need(qa, dict, at)
                qid = need(qa.get("id"), (str, int), f"{at}.id")
                question = need(qa.get("question"), str, f"{at}.question")
                answers = need(qa.get("answers"), list, f"{at}.answers (question {qid})")
                if not answers:
                    raise EvalDataError(f"{path}: question {qid} has no answers")
                for n, ans in enumerate(answers):
                    here = f"{at}.answers[{n}] (question {qid})"
                    text = need(need(ans, dict, here).get("text"), str, f"{here}.text")
                    start = need(ans.get("answer_start"), int, f"{here}.answer_start")
                    if not 0 <= start <= len(context) - len(text):
                        raise EvalDataError(f"{path}: {here}: answer_start {start} is outside its context "
                                            f"({len(context)} characters, answer of {len(text)})")
                out.append(QAExample(str(qid), question, context, answers))
                if limit and len(out) >= limit:
                    return out
    return out


def load_qa(lang: str | None, train_file: str | None, data_dir: str | None, limit: int | None,
            revision: str = "main") -> list[QAExample]:
    """lang=None: English training data (train_file, else DATA_DIR/squad/train-v1.1.json as XTREME
    lays it out, else the hub's rajpurkar/squad train). `revision`: of the hub dataset read."""
    if lang is None:
        if train_file:
            return read_squad(Path(train_file), limit)
        if data_dir and (Path(data_dir) / "squad" / "train-v1.1.json").is_file():
            return read_squad(Path(data_dir) / "squad" / "train-v1.1.json", limit)
        return _hub_qa(EVAL_DATASETS["squad"], None, "train", limit, revision)
    if data_dir:
        return read_squad(Path(data_dir) / "xquad" / f"xquad.{lang}.json", limit)
    return _hub_qa(EVAL_DATASETS["xquad"], f"xquad.{lang}", "validation", limit, revision)


def _hub_qa(name, config, split, limit, revision) -> list[QAExample]:
    ds = hub_load(name, config, split, None, revision)
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return [QAExample(str(r["id"]), r["question"], r["context"],
                      [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])])
            for r in ds]


def hub_sources(task: str, data_dir: str | None, train_file: str | None, dev_file: str | None,
                revision: str, train_revision: str) -> dict[str, dict]:
    """The hub datasets an evaluation will read ({role: record}), each revision resolved to its commit
    once (before anything is read): `test` the task's own dataset (also its English train and dev
    for XNLI and PAWS-X when no file is given), `train` rajpurkar/squad for XQuAD."""
    out = {}
    if task in ("xnli", "pawsx"):
        local_train = bool(train_file) or bool(data_dir and (Path(data_dir) / task / "train-en.tsv").is_file())
        if not data_dir or not local_train:          # test and dev rows, or the English train, from the hub
            out["test"] = record(EVAL_DATASETS[task], revision, resolve(EVAL_DATASETS[task], revision))
    elif task == "xquad":
        if not data_dir:
            out["test"] = record(EVAL_DATASETS["xquad"], revision, resolve(EVAL_DATASETS["xquad"], revision))
        if not train_file and not (data_dir and (Path(data_dir) / "squad" / "train-v1.1.json").is_file()):
            out["train"] = record(EVAL_DATASETS["squad"], train_revision, resolve(EVAL_DATASETS["squad"], train_revision))
    return out
