"""The settings of `mmkd cache-teacher` (stage one), each with its meaning and range."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.paths import default_data_dir
from mmkd.settings import setting

# bert-base-cased: the paper's teacher is "BERT-base" with the same architecture as mBERT, and
# mBERT (the student) is cased; a cased teacher keeps the case information the student sees.
DEFAULT_TEACHER = "bert-base-cased"


@dataclass
class CacheConfig:
    corpora: list[str] = setting(help="Prepared corpora (`--corpus`, repeatable).", factory=list, cli=False)
    teacher: str = setting(DEFAULT_TEACHER, "English teacher: hub id or folder (AutoModel).", cli=False)
    out: str = setting("cache", "Where caches are written: a folder or an fsspec URL.", cli=False)
    layer: int = setting(-1, "hidden_states index to store (-1 = last layer, as in the paper; 0 = embeddings).",
                         min=-64, max=64)
    max_length: int = setting(128, "Teacher input length in tokens (paper 4.1); longer sentences keep the words it "
                                   "saw.", min=3)
    dtype: str = setting("fp16", "Storage precision (int8 = per-vector absmax scale).",
                         choices=("fp32", "fp16", "bf16", "int8"))
    batch_size: int = setting(64, "Sentences per teacher forward (length-grouped).", min=1)
    shard_size: int = setting(4096, "Sentences per shard.", min=1)
    compression: str | None = setting(None, "null (memory-mapped reads, fastest) or zstd (smaller, 64-row chunks).",
                                      choices=("zstd",))
    data_dir: str = setting(help="Where prepared corpora are.", factory=default_data_dir, cli=False)
    trust_remote_code: bool = setting(False, "Allow custom model code from the hub.", cli=False)
