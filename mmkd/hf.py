"""Loading Hugging Face models and tokenizers: quietly, with what differs said once in mmkd's words, and the
starting checkpoint kept whole.

transformers prints a LOAD REPORT table (and sometimes "This checkpoint seem corrupted") for
every key a model class and a checkpoint do not share. Most of those differences are expected
here: an MLM head added to a sentence-embedding model, the pooler a masked-LM class drops, the
pre-training heads a teacher does not use, a new classifier for fine-tuning. `load` silences
transformers' report (unless `--verbose` / `MMKD_VERBOSE=1`), explains each expected difference in
one line, and warns about the rest (encoder weights missing, shapes that do not match, a
classifier that would fine-tune a random pooler).

`starting_extras` returns the tensors of the starting checkpoint that MMKD does not train (the
pooler, an NSP head, ...), so the saved student is the whole model it started from.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from mmkd.console import quiet_transformers, say
from mmkd.errors import MMKDError
from mmkd.supply import check_files, read_record

# What a load is for decides which differences are expected:
#   student     *ForMaskedLM that MMKD trains (pooler and other heads are kept aside and saved)
#   teacher     the frozen encoder (only its hidden states are used)
#   encoder     an encoder for retrieval or t-SNE (hidden states only)
#   classifier  *ForSequenceClassification to fine-tune (uses the pooler)
#   qa          *ForQuestionAnswering to fine-tune (no pooler)
ROLES = ("student", "teacher", "encoder", "classifier", "qa")

def _short(name: str) -> str:
    return os.path.basename(name.rstrip("/")) if os.path.isdir(name) else name


def missing_parts(model, info: dict) -> tuple[list[str], list[str], list[str]]:
    """The tensors a checkpoint lacked, as (pooler, encoder, head) key lists: a student whose head list
    is not empty starts a fresh MLM head."""
    prefix = getattr(model, "base_model_prefix", "")
    base_keys = set(model.base_model.state_dict()) if hasattr(model, "base_model") else set()

    def local(key: str) -> str:
        return key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key

    def in_encoder(key: str) -> bool:
        return local(key) in base_keys or key in base_keys

    missing = sorted(info.get("missing_keys", ()))
    m_pool = [k for k in missing if local(k).startswith("pooler.")]
    m_enc = [k for k in missing if in_encoder(k) and k not in m_pool]
    m_head = [k for k in missing if k not in m_pool and k not in m_enc]
    return m_pool, m_enc, m_head


def _explain(role: str, name: str, model, info: dict, head_trained: bool = True) -> list[tuple[bool, str]]:
    """(is_warning, message) for each kind of difference between `model` and its checkpoint.
    `head_trained`: for a student, whether TLM trains its MLM head."""
    m_pool, m_enc, m_head = missing_parts(model, info)
    unexpected = sorted(info.get("unexpected_keys", ()))
    u_pool = [k for k in unexpected if "pooler." in k]
    u_head = [k for k in unexpected if k not in u_pool]
    n = _short(name)
    out: list[tuple[bool, str]] = []
    if m_enc:
        out.append((True, f"{n}: {len(m_enc)} encoder tensors are not in the checkpoint and were randomly "
                          f"initialised (e.g. {', '.join(m_enc[:3])}); is this the model you meant?"))
    if info.get("mismatched_keys"):
        keys = [k if isinstance(k, str) else k[0] for k in sorted(info["mismatched_keys"])]
        out.append((True, f"{n}: {len(keys)} tensors have other shapes than in the checkpoint and were "
                          f"re-initialised (e.g. {', '.join(keys[:3])})"))
    if m_pool:
        if role == "classifier":
            out.append((True, f"{n} has no pooler: fine-tuning starts from a random one, so this model is not "
                              "comparable with one that keeps its pretrained pooler (a student saved by "
                              "`mmkd train` keeps its starting pooler)"))
        else:
            out.append((False, f"{n} has no pooler (not used here)"))
    if m_head:
        student = ("has no MLM head; TLM trains a new one (started as tlm.fresh_head says)" if head_trained else
                   "has no MLM head; TLM is off, so the saved student carries an untrained one")
        what = {"student": student,
                "classifier": "gets a new classification head, trained by the fine-tuning",
                "qa": "gets a new span-prediction head, trained by the fine-tuning"}.get(role, "has new, untrained tensors")
        out.append((role not in ("student", "classifier", "qa"), f"{n} {what} ({len(m_head)} tensors)"))
    if u_pool or u_head:
        parts = (["its pooler"] if u_pool else []) + ([f"{len(u_head)} pre-training head tensors"] if u_head else [])
        verb = "is" if parts == ["its pooler"] else "are"
        if role == "student":
            out.append((False, f"{n}: {' and '.join(parts)} {verb} not trained by MMKD and {verb} saved unchanged "
                               "with the student"))
        else:
            out.append((False, f"{n}: {' and '.join(parts)} {verb} not used here"))
    return out


def load(auto_cls, name: str, role: str, trust_remote_code: bool = False, tokenizer=None, head_trained: bool = True,
         info_out: dict | None = None, **kwargs):
    """`auto_cls.from_pretrained(name)` without transformers' report; differences said by mmkd. Given
    the `tokenizer` it will be used with, the two are checked to belong together first. `head_trained`
    (students): whether the MLM head will be trained (TLM on), for what is said of a missing one."""
    from transformers import AutoConfig   # lazy: transformers, see mmkd/__init__.py
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    name = model_name(name, role)
    if tokenizer is not None:
        with quiet_transformers(), _named(name, role):
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        check_vocabulary(tokenizer, config, f"{role} {_short(name)}")
    with quiet_transformers(), _named(name, role):
        model, info = auto_cls.from_pretrained(name, trust_remote_code=trust_remote_code,
                                               output_loading_info=True, **kwargs)
    if info_out is not None:        # what the checkpoint lacked (missing_parts), for the caller
        info_out.update(info)
    for warning, message in _explain(role, name, model, info, head_trained):
        say(("warning: " if warning else "") + message, once=True)
    return model


def check_vocabulary(tokenizer, model, name: str) -> None:
    """A tokenizer that does not belong to the model is refused: one whose ids run past the model's
    embedding rows, or one far smaller than the model's vocabulary (transformers builds a 5-piece
    tokenizer for a folder without tokenizer files, and every word becomes [UNK])."""
    rows = getattr(getattr(model, "config", model), "vocab_size", None)
    pieces = len(tokenizer)
    if rows is None:
        return
    if pieces > rows:
        raise MMKDError(f"{name}: its tokenizer has {pieces} pieces but the model only {rows} embedding rows; they do "
                        "not belong together (give the folder of one model, with its own tokenizer files)")
    if pieces < min(1000, rows // 2):
        raise MMKDError(f"{name}: its tokenizer has only {pieces} pieces for a vocabulary of {rows}: the folder lacks "
                        "the model's tokenizer files (tokenizer.json, or vocab.txt / sentencepiece.bpe.model); copy "
                        "them there")


def model_name(name, what: str) -> str:
    """`name` as a model name or folder: a str or a path, never a model object (mmkd reads models from
    folders or the hub, so that a run records where its model came from). A folder mmkd built
    (`mmkd models build`) is checked against its files' checksums first."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise MMKDError(f"{what}: expected a model name or folder, got {type(name).__name__} "
                        f"{str(name).splitlines()[0][:60] if name is not None else ''}; save a model object with "
                        ".save_pretrained(DIR) and give DIR")
    if os.path.isfile(os.path.join(name, "mmkd-model.json")):
        check_files(Path(name), read_record(Path(name)))
    return name


def load_config(name: str, trust_remote_code: bool = False, what: str = "model"):
    from transformers import AutoConfig   # lazy: transformers, see mmkd/__init__.py
    name = model_name(name, what)
    with quiet_transformers(), _named(name, what):
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)


def load_tokenizer(name: str, trust_remote_code: bool = False, what: str = "tokenizer"):
    from transformers import AutoTokenizer   # lazy: transformers, see mmkd/__init__.py
    name = model_name(name, what)

    with quiet_transformers(), _named(name, what):
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)


@contextlib.contextmanager
def _named(name: str, what: str):
    """A model or tokenizer that cannot be found is one line naming it, not a traceback."""
    try:
        yield
    except MMKDError:
        raise
    except Exception as e:   # OSError, ValueError, safetensors' SafetensorError (a truncated file), ...
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        if os.path.exists(name) and not os.path.isdir(name):
            why = "is a file; give the folder that holds config.json"
        elif os.path.isdir(name):
            why = f"is a folder without a loadable model ({type(e).__name__}: {first}); a weights file may be " \
                  "truncated or missing: copy the model folder again"
        elif name.startswith((".", "/", "~")) or name.count("/") > 1:   # a path (a hub id has one '/')
            why = "does not exist"
        else:
            why = f"is neither a local folder nor a model in the hub cache, and the hub was not reached ({first})"
        raise MMKDError(f"{what} {name!r} {why}") from None


def starting_extras(start: str, trained: torch.nn.Module, trust_remote_code: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of the starting checkpoint `start` that `trained` does not hold (its pooler, an NSP
    head, ...), named as `trained` names them, unchanged. The checkpoint is read through its own
    architecture class (config.architectures), so transformers' renames (gamma/beta → weight/bias)
    apply; tensors that class would initialise randomly are not "starting" tensors and are left out."""
    import transformers   # lazy: transformers, see mmkd/__init__.py
    from transformers import AutoConfig   # lazy: transformers, see mmkd/__init__.py
    with quiet_transformers():
        config = AutoConfig.from_pretrained(start, trust_remote_code=trust_remote_code)
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:   # no architecture recorded, or custom code: the base model is what can be read
        cls = transformers.AutoModel
    with quiet_transformers():
        full, info = cls.from_pretrained(start, trust_remote_code=trust_remote_code, output_loading_info=True)
    random = set(info.get("missing_keys", ())) | {k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", ())}
    prefix = trained.base_model_prefix
    state = full.state_dict()
    bare = not any(k.startswith(prefix + ".") for k in state)   # a bare encoder checkpoint (BertModel)
    mine = trained.state_dict()
    extras = {}
    for key, tensor in state.items():
        if key in random:
            continue
        name = f"{prefix}.{key}" if bare else key
        if name not in mine:
            extras[name] = tensor.detach().clone()
    return extras


__all__ = ["load", "load_tokenizer", "starting_extras"]
