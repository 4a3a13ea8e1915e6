"""Datasets read from the Hugging Face hub: their namespaced ids, the revisions mmkd pins, and the
commit a revision resolves to.

A revision (branch, tag or commit) is resolved once, before anything is read, and every later read
names that commit, so the seeds and languages of one evaluation (or the shards of one corpus) all
read the same data even if the hub moves meanwhile; the commit is what results.json and the corpus
meta record. With `HF_HUB_OFFLINE=1` a branch cannot be resolved: the data then comes from the local
cache as `datasets` finds it and the commit is recorded as unknown (null), never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from mmkd.errors import MMKDError

COMMIT = re.compile(r"[0-9a-f]{40}")

# The evaluation datasets, by the ids their owners publish them under (the legacy unnamespaced ids
# `xnli`, `paws-x`, `squad`, `xquad` are redirects that may go away).
EVAL_DATASETS = {"xnli": "facebook/xnli", "pawsx": "google-research-datasets/paws-x", "squad": "rajpurkar/squad",
                 "xquad": "google/xquad"}


@dataclass(frozen=True)
class HubCorpus:
    """A paper corpus (section 4.1) as the hub mirrors it in parquet: `config` is the folder of the
    pair's files, whose rows are {"translation": {"en": ..., lang: ...}}."""
    repo_id: str
    config: str
    revision: str
    split: str = "train"


# Pinned commits of the parquet mirrors (each seen on the hub with these files):
# Helsinki-NLP/europarl ab45e28 "Update dataset card (#9)", after "Convert dataset to Parquet (#8)":
#   PAIR/train-0000N-of-0000M.parquet for every pair (bg-en, de-en, en-es, en-fr, ...);
# Helsinki-NLP/multiun 3a68754 "Add en-zh data files", the last English pair's commit of the
#   conversion to parquet (#8): ar-en ... en-zh each PAIR/train-0000N-of-0000M.parquet;
# cfilt/iitb-english-hindi 643cf5d "Update README.md": data/{train,validation,test}-00000-of-00001.parquet.
# EUbookshop (the paper's second en-bg corpus) has no parquet mirror; en-bg reads Europarl's bg-en.
EUROPARL = "ab45e286aef3fb5780067100cb5a1132b52b7949"
MULTIUN = "3a687540499bf8477f4c27e95388c2d39e8b3346"
IITB = "643cf5d7065f303a6c144e085cb1ff052b9dcd48"
HUB_CORPORA: dict[str, list[HubCorpus]] = {
    "en-ar": [HubCorpus("Helsinki-NLP/multiun", "ar-en", MULTIUN)],
    "en-bg": [HubCorpus("Helsinki-NLP/europarl", "bg-en", EUROPARL)],
    "en-de": [HubCorpus("Helsinki-NLP/europarl", "de-en", EUROPARL)],
    "en-es": [HubCorpus("Helsinki-NLP/europarl", "en-es", EUROPARL)],
    "en-fr": [HubCorpus("Helsinki-NLP/europarl", "en-fr", EUROPARL)],
    "en-hi": [HubCorpus("cfilt/iitb-english-hindi", "default", IITB)],
    "en-zh": [HubCorpus("Helsinki-NLP/multiun", "en-zh", MULTIUN)],
}
# The same corpora by their OPUS names (a cache's corpus sources), for a model card's `datasets:`.
OPUS_ON_HUB = {"Europarl": "Helsinki-NLP/europarl", "MultiUN": "Helsinki-NLP/multiun",
               "IITB": "cfilt/iitb-english-hindi"}


class HubDataError(MMKDError):
    pass


def offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def resolve(repo_id: str, revision: str = "main", repo_type: str = "dataset") -> str | None:
    """The commit `revision` of `repo_id` is at now (a commit is itself); None when offline."""
    if COMMIT.fullmatch(revision):
        return revision
    if offline():
        return None
    try:
        info = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type)
    except RevisionNotFoundError:
        raise HubDataError(f"{repo_type} {repo_id}: no revision {revision!r} on the hub") from None
    except RepositoryNotFoundError:
        raise HubDataError(f"{repo_type} {repo_id}: not found on the hub (or private: log in with `hf auth "
                           "login`)") from None
    except HfHubHTTPError as e:
        raise HubDataError(f"{repo_type} {repo_id} at {revision!r}: the hub answered "
                           f"{str(e).splitlines()[0][:200]}") from None
    except OSError as e:       # no route to the hub: say so in one line, not a traceback
        raise HubDataError(f"{repo_type} {repo_id}: the hub cannot be reached ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''}); set HF_HUB_OFFLINE=1 to use the "
                           "local cache") from None
    return info.sha


def record(repo_id: str, revision: str, commit: str | None) -> dict:
    """What results.json and a corpus's meta say of a hub dataset they read."""
    return {"id": repo_id, "revision": revision, "commit": commit}


def load(repo_id: str, config: str | None, split: str, commit: str | None, revision: str = "main"):
    """`datasets.load_dataset` at the resolved commit (offline: at `revision`, from the local cache)."""
    import datasets   # lazy: 1.1 s to import; only a dataset read from the hub needs it

    try:
        return datasets.load_dataset(repo_id, config, split=split, revision=commit or revision)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise HubDataError(f"dataset {repo_id} (config {config!r}, split {split!r}, revision "
                           f"{(commit or revision)[:12]}): {first}") from None


__all__ = ["EVAL_DATASETS", "HUB_CORPORA", "OPUS_ON_HUB", "HubCorpus", "HubDataError", "resolve", "record", "load"]
