"""`mmkd export STUDENT_DIR --format sentence-transformers`: a trained student as a folder that
sentence-transformers loads (offline, `SentenceTransformer(folder)`), whose vectors are the ones
`mmkd eval retrieval` measures: the mean of the last hidden states over every token of the input
(special tokens included), L2-normalised, at 128 tokens.

Layout (sentence-transformers' own, module 0 at the folder's root as on the hub):

    modules.json                       Transformer (.), Pooling (1_Pooling), Normalize (2_Normalize)
    sentence_bert_config.json          max_seq_length, do_lower_case
    config_sentence_transformers.json  the similarity (cosine) and the versions that wrote it
    config.json, model.safetensors     the encoder (the MLM head a student carries is left out)
    tokenizer files
    1_Pooling/config.json              mean (or [CLS]) pooling
    2_Normalize/
    README.md                          a card with sentence-transformers' metadata and where it came from

Written into a `.tmp` folder and renamed into place, so a crash leaves no half folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mmkd import __version__
from mmkd.atomic import publish
from mmkd.errors import MMKDError
from mmkd.hf import load, load_tokenizer, quiet_transformers

FORMATS = ("sentence-transformers",)


def export_sentence_transformers(student: str, out: str | Path, pooling: str = "mean", max_seq_length: int = 128,
                                 trust_remote_code: bool = False) -> Path:
    import transformers   # lazy: transformers, see mmkd/__init__.py
    from transformers import AutoModel   # lazy: transformers, see mmkd/__init__.py
    out = Path(out)
    if out.exists():
        raise MMKDError(f"{out}: already exists; choose another --out or remove it")
    if pooling not in ("mean", "cls"):
        raise MMKDError(f"--pooling {pooling!r}: mean (what retrieval measures) or cls")
    tokenizer = load_tokenizer(student, trust_remote_code)
    model = load(AutoModel, student, "encoder", trust_remote_code, tokenizer=tokenizer)
    if getattr(model.config, "max_position_embeddings", max_seq_length) < max_seq_length:
        raise MMKDError(f"--max-seq-length {max_seq_length}: the model has {model.config.max_position_embeddings} "
                        "positions")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        width = model.config.hidden_size
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
        files = {
            "modules.json": modules,
            "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
            "config_sentence_transformers.json": {
                "__version__": {"mmkd": __version__, "transformers": transformers.__version__,
                                "pytorch": torch.__version__},
                "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
            "1_Pooling/config.json": {
                "word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": False, "include_prompt": True},
        }
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (tmp / "2_Normalize").mkdir()
        (tmp / "README.md").write_text(_card(student, pooling, max_seq_length), encoding="utf-8")
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _card(student: str, pooling: str, max_seq_length: int) -> str:
    source = Path(student) / "README.md"
    body = ""
    if source.is_file():        # the student's own card (what it was trained from, its results), without its metadata
        text = source.read_text(encoding="utf-8")
        body = text.split("---", 2)[2].lstrip() if text.startswith("---") else text
    pooled = "the mean of the last hidden states over every token" if pooling == "mean" else "the [CLS] state"
    return ("---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\ntags:\n"
            "- sentence-transformers\n- feature-extraction\n- mmkd\n---\n\n"
            f"A sentence encoder exported by `mmkd export` from an MMKD student. Its vector is {pooled} "
            f"(up to {max_seq_length} tokens), L2-normalised: the vector `mmkd eval retrieval` measures.\n\n"
            "```python\nfrom sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(PATH)\n"
            "vectors = model.encode([\"Hello world\", \"Bonjour le monde\"])\n```\n\n" + body)
