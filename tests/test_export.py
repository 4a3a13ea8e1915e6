"""`mmkd export --format sentence-transformers`: a folder sentence-transformers loads offline, whose
vectors equal the ones `mmkd eval retrieval` measures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mmkd.cli import main


def test_the_exported_folder_loads_in_sentence_transformers_and_gives_retrievals_vectors(tmp_path, tiny_student,
                                                                                         shared):
    st = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (the demo extra)")
    from transformers import AutoModel, AutoTokenizer

    from mmkd.eval.retrieval import embed

    out = tmp_path / "student-st"
    r = CliRunner().invoke(main, ["export", tiny_student, "--out", str(out)])
    assert r.exit_code == 0 and f"wrote {out}\n" in r.output, r.output
    assert "Writing model shards" not in r.output
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert not list(tmp_path.glob(".*.tmp"))
    sentences = (shared / "parallel" / "ntrex128" / "newstest2019-ref.fra.txt").read_text().splitlines()[:12]
    model = st.SentenceTransformer(str(out), device="cpu")
    got = model.encode(sentences, convert_to_numpy=True, batch_size=5)
    encoder = AutoModel.from_pretrained(tiny_student).eval()
    want = embed(encoder, AutoTokenizer.from_pretrained(tiny_student), sentences)["mean"].numpy()
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers\n")
    # An existing folder is never written over.
    r = CliRunner().invoke(main, ["export", tiny_student, "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
