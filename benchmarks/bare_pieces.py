"""How many English words get a bare sentencepiece `▁` as their student state: pre-split input
(`is_split_into_words=True`, what mmkd fed the student before) against the raw sentence with words
found through character offsets (what it feeds now). Prints JSON.

    python benchmarks/bare_pieces.py --shared-data ../shared/data [--student DIR] [--sentences 1500]

Default student: multilingual-e5-small (`mmkd models build multilingual-e5-small`). Data: the first
`--sentences` English sentences of every Tatoeba file in SHARED/parallel/tatoeba_challenge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from mmkd.words import align_by_offsets, blank_tokens, first_subtoken_positions, split_words, word_starts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-data", default="../shared/data")
    ap.add_argument("--student", default=None)
    ap.add_argument("--sentences", type=int, default=1500)
    args = ap.parse_args()
    if args.student is None:
        from mmkd.supply import model_folder
        args.student = str(model_folder("multilingual-e5-small"))
    tok = AutoTokenizer.from_pretrained(args.student)
    words_total = bare_split = bare_offsets = 0
    files = sorted((Path(args.shared_data) / "parallel" / "tatoeba_challenge").glob("eng-*.tsv"))
    for f in files:
        english = [line.split("\t")[0] for line in f.read_text(encoding="utf-8").splitlines()[:args.sentences]]
        words = [split_words(e) for e in english]
        split = tok(words, is_split_into_words=True)
        raw = tok(english, return_offsets_mapping=True)
        for b, ws in enumerate(words):
            words_total += len(ws)
            pieces = tok.convert_ids_to_tokens(split["input_ids"][b])
            bare_split += sum(pieces[p] == "▁" for p in first_subtoken_positions(split.word_ids(b), len(ws)) if p >= 0)
            ids = raw["input_ids"][b]
            _, pos = align_by_offsets(english[b], word_starts(english[b], ws), raw["offset_mapping"][b],
                                      raw.sequence_ids(b), 0, blank_tokens(tok, ids))
            pieces = tok.convert_ids_to_tokens(ids)
            bare_offsets += sum(pieces[p] == "▁" for p in pos if p >= 0)
    print(json.dumps({"student": Path(args.student).name, "files": [f.name for f in files], "words": words_total,
                      "bare_piece_words_pre_split": bare_split,
                      "bare_piece_fraction_pre_split": round(bare_split / words_total, 4),
                      "bare_piece_words_offsets": bare_offsets}, indent=2))


if __name__ == "__main__":
    main()
