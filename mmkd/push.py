"""`mmkd push STUDENT_DIR ORG/NAME`: publish a student `mmkd train` saved, in one commit, through
huggingface_hub.

What goes up is exactly the files the folder's `mmkd_run.json` lists (weights, tokenizer, the cache
manifests it was trained from, the run's settings) plus `eval_summary.json`; a listed file that is
missing is refused before anything is sent. The card's metadata is built with `ModelCardData`:
base_model, language, license, datasets (the training corpora's hub ids and the evaluation datasets),
tags, and a `model-index` from the zero-shot results `mmkd eval` recorded in the folder; its body is
the folder's own card. The folder itself is not changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCardData
from huggingface_hub.errors import HfHubHTTPError

from mmkd.cache.manifest import Manifest
from mmkd.errors import MMKDError
from mmkd.hub_data import EVAL_DATASETS, OPUS_ON_HUB
from mmkd.model_card import CARD, EVAL_FILE, RUN_FILE, _is_hub_id, _languages, starting_license

# (hub task type, task name, dataset name) of each zero-shot task a model-index reports
TASKS = {"xnli": ("text-classification", "Zero-shot cross-lingual natural language inference", "XNLI"),
         "pawsx": ("text-classification", "Zero-shot cross-lingual paraphrase identification", "PAWS-X"),
         "xquad": ("question-answering", "Zero-shot cross-lingual question answering", "XQuAD")}
TAGS = ["mmkd", "knowledge-distillation", "multilingual", "cross-lingual"]


class PushError(MMKDError):
    pass


@dataclass
class Upload:
    files: list[str]          # paths inside the folder, as they go up
    card: str                 # README.md as the hub will hold it


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PushError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except ValueError as e:
        raise PushError(f"{path}: the {what} is not JSON ({e})") from None


def _student(folder: Path) -> dict:
    if not folder.is_dir():
        raise PushError(f"{folder}: no such folder")
    if not (folder / RUN_FILE).is_file():
        raise PushError(f"{folder}: not a student saved by `mmkd train` (no {RUN_FILE}); publish other models with "
                        "huggingface_hub directly")
    run = _read_json(folder / RUN_FILE, "run record")
    listed = run.get("files")
    if not isinstance(listed, list) or not listed:
        raise PushError(f"{folder / RUN_FILE}: lists no files (saved by an mmkd before 0.4); save it again with "
                        "`mmkd train --resume` or publish it with huggingface_hub directly")
    missing = [f for f in listed if not (folder / f).is_file()]
    if missing:
        raise PushError(f"{folder}: {missing[0]} is missing ({len(missing)} of the {len(listed)} files the student "
                        f"lists); nothing was sent")
    return run


def base_model(start: str) -> str | None:
    """The hub id the student started from: itself, or the original of a model mmkd built."""
    if _is_hub_id(start):
        return start
    record = Path(start) / "mmkd-model.json"
    if record.is_file():
        try:
            original = json.loads(record.read_text()).get("original")
        except ValueError:
            return None
        return original if isinstance(original, str) and _is_hub_id(original) else None
    return None


def corpus_datasets(manifests: list[dict]) -> list[str]:
    """The hub ids of the corpora a student's caches were made from (OPUS releases by their hub
    mirrors; hub datasets as they are)."""
    out = []
    for m in manifests:
        for source in (m.get("corpus") or {}).get("sources", []):
            kind, _, rest = source.partition(":")
            name = None
            if kind == "opus":
                name = OPUS_ON_HUB.get(rest.split("/", 1)[0])
            elif kind == "hub":
                name = "/".join(rest.split("@", 1)[0].split("/")[:2])
            elif kind == "hf":
                name = rest.split("[", 1)[0]
            if name and _is_hub_id(name) and name not in out:
                out.append(name)
    return out


def eval_results(evals: dict) -> list:
    """One EvalResult per task and language (and the average) of the zero-shot results recorded."""
    results = []
    for task, summary in sorted(evals.items()):
        if task not in TASKS or not isinstance(summary.get("values"), dict):
            continue       # retrieval, or a summary written before the numbers were kept
        kind, task_name, data_name = TASKS[task]
        hub = summary.get("hub_dataset") or {}
        for lang, value in summary["values"].items():
            config = f"xquad.{lang}" if task == "xquad" else lang
            results.append(EvalResult(
                task_type=kind, task_name=task_name, dataset_type=EVAL_DATASETS[task],
                dataset_name=f"{data_name} ({lang})", dataset_config=config, dataset_split=summary.get("split", "test"),
                dataset_revision=hub.get("commit"), metric_type=summary["metric"], metric_value=round(float(value), 2),
                metric_name=f"{summary['metric']} (%, mean of fine-tuning seeds)"))
    return results


def build(folder: str | Path, repo_id: str, license_: str | None = None) -> Upload:
    """The files and the card `push` would send."""
    folder = Path(folder)
    run = _student(folder)
    files = sorted(set(run["files"]) - {CARD} | ({EVAL_FILE} if (folder / EVAL_FILE).is_file() else set()))
    raw = [_read_json(folder / f, "cache manifest") for f in files if f.startswith("cache-manifest-")]
    manifests = {}
    for f, data in zip([f for f in files if f.startswith("cache-manifest-")], raw):
        m = Manifest.parse(data, str(folder / f))
        manifests[m.corpus_name] = m
    evals = _read_json(folder / EVAL_FILE, "evaluation summary") if (folder / EVAL_FILE).is_file() else {}
    start = (run.get("config") or {}).get("student", "")
    results = eval_results(evals)
    data = ModelCardData(
        model_name=repo_id.split("/")[-1], base_model=base_model(start), language=_languages(run, manifests),
        license=license_ or starting_license(start), library_name="transformers", pipeline_tag="fill-mask",
        datasets=corpus_datasets(raw) + [EVAL_DATASETS[t] for t in sorted(evals) if t in EVAL_DATASETS] or None,
        tags=TAGS, eval_results=results or None)
    body = (folder / CARD).read_text(encoding="utf-8") if (folder / CARD).is_file() else ""
    if body.startswith("---"):
        body = body.split("---", 2)[2].lstrip("\n")
    return Upload(files, f"---\n{data.to_yaml()}\n---\n\n{body}")


def push(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         message: str | None = None, license_: str | None = None) -> str:
    """Create `repo_id` if needed and commit the student to it. Returns the commit's URL."""
    if not _is_hub_id(repo_id) or "/" not in repo_id:
        raise PushError(f"{repo_id!r} is not a hub repo id; give ORG/NAME (or USER/NAME)")
    upload = build(folder, repo_id, license_)
    folder = Path(folder)
    api = HfApi()
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in upload.files]
    ops.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=upload.card.encode("utf-8")))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, ops, commit_message=message or f"Upload MMKD student ({len(ops)} files)",
                                 revision=revision)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise PushError(f"the hub refused the token (401) for {repo_id}; log in with `hf auth login` or set "
                            "HF_TOKEN to a token that may write there") from None
        if status == 403:
            raise PushError(f"the token may not write to {repo_id} (403)") from None
        raise PushError(f"pushing to {repo_id}: {str(e).splitlines()[0][:200]}") from None
    except ValueError as e:        # the hub's check of the card's metadata
        raise PushError(f"the hub refused the card of {repo_id}: {str(e).strip()[:300]}") from None
    except OSError as e:
        raise PushError(f"the hub cannot be reached ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return info.commit_url


__all__ = ["push", "build", "Upload", "PushError", "eval_results", "corpus_datasets", "base_model"]
