"""The model card (`README.md`) of a saved student, so the folder can be published as it is.

The card's metadata block is what the Hugging Face hub reads (base model, languages, licence of
the starting model when it can be found, library, tags); its body says how the student was made
(starting model, teacher and cache identity, corpora, objectives, settings, steps). `mmkd eval`
records each task's summary in `eval_summary.json` beside it and rewrites the card's evaluation
section from that file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from mmkd import __version__
from mmkd.atomic import write_text
from mmkd.config import from_saved
from mmkd.objectives import build_objectives
from mmkd.supply import describe

CARD = "README.md"
EVAL_FILE = "eval_summary.json"
RUN_FILE = "mmkd_run.json"
_EVAL_START, _EVAL_END = "<!-- mmkd:eval:start -->", "<!-- mmkd:eval:end -->"


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(name) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def starting_license(name: str) -> str | None:
    """The `license:` of the starting model's own card: a local folder's README.md, or the hub
    cache's copy (never downloaded for this)."""
    card = Path(name) / CARD if os.path.isdir(name) else None
    if card is None and _is_hub_id(name):
        try:
            found = try_to_load_from_cache(name, CARD)
            card = Path(found) if isinstance(found, str) else None
        except Exception:   # an old huggingface_hub or an unusual cache: the licence stays unknown
            card = None
    if card is None or not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1]
    m = re.search(r"^license:\s*(\S+)\s*$", front, re.MULTILINE)
    return m.group(1).strip("'\"") if m else None


def _languages(run: dict, manifests: dict) -> list[str]:
    pairs = [m.corpus_pair for m in manifests.values()] or [i["corpus"] for i in run.get("caches", [])]
    langs = ["en"] + sorted({p.split("-", 1)[1] for p in pairs if "-" in p})
    return langs


def _front_matter(run: dict, manifests: dict, start: str) -> list[str]:
    """The card's YAML header: base model, languages, licence, tags."""
    license_ = starting_license(start)
    meta = ["---"]
    if _is_hub_id(start):
        meta.append(f"base_model: {start}")
    meta.append("language:")
    meta += [f"- {lang}" for lang in _languages(run, manifests)]
    if license_:
        meta.append(f"license: {license_}")
    return meta + ["library_name: transformers", "pipeline_tag: fill-mask",
                   "tags:", "- mmkd", "- knowledge-distillation", "- multilingual", "- cross-lingual", "---", ""]


def _how_made(run: dict, manifests: dict, settings, teacher_source: str | None) -> list[str]:
    """The table of what the run was: starting model, teacher, objectives, steps, optimiser."""
    teacher = next(iter(manifests.values()), None)
    objectives = build_objectives(settings).objectives
    lines = ["## How it was made", "", "| | |", "|---|---|", f"| starting model | {describe(settings.student)} |"]
    if teacher is not None:
        source = teacher_source or describe(teacher.teacher_source)
        lines.append(f"| teacher | {source} (weights sha256 {teacher.teacher_hash[:16]}, layer {teacher.layer}) |")
    elif settings.online_teacher:
        lines.append(f"| teacher | {teacher_source or describe(settings.online_teacher)} (run online, no cache) |")
    described = "; ".join(f"{o.title}: {o.describe()}" for o in objectives if o.describe()) or "none"
    return lines + [
        f"| objectives | {' + '.join(o.title for o in objectives)} "
        f"(weights: {', '.join(f'{o.name} {o.weight:g}' for o in objectives)}) |",
        f"| objective settings | {described} |",
        f"| steps | {run.get('total_steps')} of global batch {settings.batch_size} on {run.get('processes')} "
        f"process(es) ({run.get('steps_per_epoch')} steps per epoch) |",
        f"| optimiser | AdamW, peak lr {settings.lr}, weight decay {settings.weight_decay}, warm-up "
        f"{settings.warmup_ratio}, max length {settings.max_length} |",
        f"| teacher heads | {settings.heads.teacher} |",
        f"| seed | {settings.seed} |", "",
    ]


def card_text(run: dict, manifests: dict, evals: dict[str, dict] | None = None,
              teacher_source: str | None = None) -> str:
    """The card of a run (`run`: its config.json) that read these caches (`{corpus: Manifest}`)."""
    settings = from_saved(run["config"], RUN_FILE, run.get("config_version"))
    lines = [
        f"# MMKD student of {describe(settings.student)}", "",
        "Continued pre-training with MMKD (multi-level multilingual knowledge distillation: Li et al., "
        "*Multi-level Distillation of Semantic Knowledge for Pre-training Multilingual Language Model*) by "
        f"mmkd {run.get('mmkd_version', __version__)}. Every tensor of the "
        "starting checkpoint that MMKD does not train (its pooler, other pre-training heads) is saved here "
        "unchanged, so `AutoModel`, `AutoModelForSequenceClassification` and `AutoModelForQuestionAnswering` "
        "load this folder with nothing missing.", "",
        *_how_made(run, manifests, settings, teacher_source),
        "### Corpora and teacher cache", "",
        "| corpus | pair | pairs | fingerprint (sha256) | cache |", "|---|---|---|---|---|",
    ]
    for ident in run.get("caches", []):
        m = manifests.get(ident["corpus"])
        lines.append(f"| {ident['corpus']} | {m.corpus_pair if m else ''} | {m.n_sentences if m else ''} | "
                     f"{ident['fingerprint'][:16]} | {ident.get('source', '')} |")
    lines += ["", "Every setting of the run is in `mmkd_run.json`; the cache manifests it read are the "
              "`cache-manifest-*.json` files.", "", "## Evaluation", "", _EVAL_START, eval_section(evals or {}),
              _EVAL_END, ""]
    return "\n".join(_front_matter(run, manifests, settings.student) + lines)


def eval_section(evals: dict[str, dict]) -> str:
    if not evals:
        return "Not evaluated yet: `mmkd eval xnli --model THIS_FOLDER` writes its results here."
    out = []
    for name, r in sorted(evals.items()):
        langs = list(r["per_language"])
        out += [f"**{name}** ({r['metric']}, %, {r['detail']})", "",
                "| " + " | ".join(langs + ["avg"]) + " |", "|" + "---|" * (len(langs) + 1),
                "| " + " | ".join(r["per_language"][lang] for lang in langs) + f" | {r['avg']} |", ""]
    return "\n".join(out).rstrip()


def is_student_folder(model: str) -> bool:
    """Whether `model` is a student folder saved by `mmkd train` (its run record and card)."""
    return (Path(model) / RUN_FILE).is_file() and (Path(model) / CARD).is_file()


def record_eval(model: str, name: str, summary: dict) -> bool:
    """If `model` is a student folder saved by `mmkd train`, add task `name`'s result to its card
    (`summary`: what the task's `card(result)` gives). Returns whether it did."""
    folder = Path(model)
    if not is_student_folder(model):
        return False
    path = folder / EVAL_FILE
    evals = json.loads(path.read_text()) if path.is_file() else {}
    evals[name] = summary
    write_text(path, json.dumps(evals, indent=2, ensure_ascii=False) + "\n")
    card = (folder / CARD).read_text(encoding="utf-8")
    if _EVAL_START in card and _EVAL_END in card:
        head, rest = card.split(_EVAL_START, 1)
        tail = rest.split(_EVAL_END, 1)[1]
        card = f"{head}{_EVAL_START}\n{eval_section(evals)}\n{_EVAL_END}{tail}"
        write_text(folder / CARD, card)
    return True
