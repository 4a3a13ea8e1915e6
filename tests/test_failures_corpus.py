"""`corpus prepare` under failure: nothing of the user's is deleted, nothing half-made is left
looking finished, and every bad input is one clear line with exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.corpus import CorpusConfig, list_corpora, open_corpus, prepare_corpus
from mmkd.errors import CorpusError


def _tsv(shared: Path) -> str:
    return str(shared / "parallel/tatoeba_challenge/eng-fra.tsv")


def _prepare(tmp_path, shared, *args):
    return CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--tsv", _tsv(shared), "--min-tokens", "3",
                                     "--data-dir", str(tmp_path / "d"), "--quiet", *args])


def _one_line_error(r, *fragments):
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    for fragment in fragments:
        assert fragment in r.output, r.output


def test_a_users_file_in_the_output_folder_is_never_deleted(tmp_path, shared):
    assert _prepare(tmp_path, shared).exit_code == 0
    out = tmp_path / "d" / "corpora" / "en-fr"
    note = out / "NOTES.txt"
    note.write_text("my notes")
    _one_line_error(_prepare(tmp_path, shared), "already holds a prepared corpus; pass --overwrite")
    _one_line_error(_prepare(tmp_path, shared, "--overwrite"), "holds files mmkd did not write (NOTES.txt)")
    assert note.read_text() == "my notes"
    note.unlink()
    before = open_corpus(str(out)).fingerprint
    r = _prepare(tmp_path, shared, "--overwrite", "--seed", "3")
    assert r.exit_code == 0 and open_corpus(str(out)).fingerprint != before
    assert sorted(p.name for p in out.parent.iterdir()) == ["en-fr"]     # no temporary folders left


def test_a_folder_mmkd_did_not_make_is_not_replaced(tmp_path, shared):
    mine = tmp_path / "d" / "corpora" / "en-fr"
    mine.mkdir(parents=True)
    (mine / "data.txt").write_text("keep me")
    _one_line_error(_prepare(tmp_path, shared, "--overwrite"), "is not a prepared corpus; mmkd will not replace it")
    assert (mine / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["..", "../x", "/tmp/somewhere", "a/b", ".hidden"])
def test_names_are_one_folder_name(tmp_path, shared, name):
    _one_line_error(_prepare(tmp_path, shared, "--name", name), "a corpus name is one folder name")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").rglob("*.arrow"))


def test_a_pair_cannot_escape_the_corpora_folder(tmp_path, shared):
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr/../../x", "--tsv", _tsv(shared),
                                  "--data-dir", str(tmp_path / "d"), "--quiet"])
    _one_line_error(r, "must look like 'en-XX'")
    assert not any(tmp_path.rglob("*.arrow"))


@pytest.mark.parametrize("key,value", [("max_pairs", "0"), ("max_pairs", "-3"), ("max_tokens", "0"),
                                       ("min_tokens", "200")])
def test_impossible_counts_are_refused(tmp_path, shared, key, value):
    _one_line_error(_prepare(tmp_path, shared, f"{key}={value}"), f"{key}={value}")
    assert not (tmp_path / "d" / "corpora" / "en-fr").exists()


def test_a_folder_given_as_a_file(tmp_path):
    for option in (["--tsv", str(tmp_path)], ["--zip", str(tmp_path)], ["--moses", str(tmp_path), str(tmp_path)]):
        r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", *option, "--data-dir", str(tmp_path / "d"), "--quiet"])
        _one_line_error(r, f"{tmp_path}: is a folder")


def test_a_file_where_a_folder_should_be(tmp_path, shared):
    (tmp_path / "d").write_text("not a folder")
    _one_line_error(_prepare(tmp_path, shared), "is a file, not a folder; choose another --data-dir")
    (tmp_path / "d").unlink()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "corpora").write_text("x")
    _one_line_error(_prepare(tmp_path, shared), "corpora is a file, not a folder")
    assert list_corpora(str(tmp_path / "d")) == []


def test_utf16_is_named_and_a_utf8_bom_is_not_text(tmp_path, shared):
    rows = Path(_tsv(shared)).read_text(encoding="utf-8").splitlines()[:50]
    (tmp_path / "u16.tsv").write_text("\n".join(rows) + "\n", encoding="utf-16")
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--tsv", str(tmp_path / "u16.tsv"),
                                  "--data-dir", str(tmp_path / "d"), "--quiet"])
    _one_line_error(r, "u16.tsv: UTF-16", "iconv")
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + ("\n".join(rows) + "\n").encode())
    corpus = open_corpus(str(prepare_corpus(CorpusConfig(pair="en-fr", tsv=str(tmp_path / "bom.tsv"), min_tokens=1,
                                                         data_dir=str(tmp_path / "d")), progress=False)))
    assert not any(s.startswith("\ufeff") for s in corpus.table.column("en").to_pylist())
    assert rows[0].split("\t")[0] in corpus.table.column("en").to_pylist()


def test_a_missing_length_tokenizer_is_one_line(tmp_path, shared):
    _one_line_error(_prepare(tmp_path, shared, f"length_tokenizer={tmp_path / 'nope'}"),
                    "length_tokenizer", "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_data_dir(tmp_path, shared):  # pragma: no cover - CI runs as root
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o500)
    _one_line_error(_prepare(tmp_path, shared), "cannot write")


def test_disk_full_leaves_nothing_and_says_so(tmp_path, shared, monkeypatch):
    """The Arrow write fails as on a full disk: one line, no corpus, no temporary folder."""
    import pyarrow as pa

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "d" / "corpora"))
    monkeypatch.setattr(pa, "OSFile", full)
    _one_line_error(_prepare(tmp_path, shared), "No space left on device", "free some space")
    assert list((tmp_path / "d" / "corpora").iterdir()) == []
    with pytest.raises(CorpusError):
        open_corpus("en-fr", str(tmp_path / "d"))


def test_line_and_paragraph_separators_inside_a_pair_never_split_it(tmp_path):
    """U+2028, U+2029, U+0085 and \\f are line breaks to str.splitlines, not to a file: a pair holding
    one stays one pair, unchanged (corpus prepare, retrieval pairs, the demo's files)."""
    import pyarrow as pa

    from mmkd.eval.retrieval import _lines
    from mmkd.lines import split_lines

    seps = ["\u2028", "\u2029", "\u0085", "\x0c"]
    rows = [(f"Sentence {i} of the file is here{seps[i % 4] if i % 50 == 0 else ' '}and it goes on.",
             f"La phrase {i} du fichier est ici{seps[i % 4] if i % 50 == 0 else ' '}et elle continue.")
            for i in range(210)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{e}\t{x}\n" for e, x in rows), encoding="utf-8")
    out = prepare_corpus(CorpusConfig(pair="en-fr", tsv=str(tsv), data_dir=str(tmp_path / "d"), min_tokens=3),
                         progress=False)
    table = pa.ipc.open_file(str(out / "pairs.arrow")).read_all()
    assert sorted(zip(table.column("en").to_pylist(), table.column("x").to_pylist())) == sorted(rows)
    assert _lines(tsv) == [f"{e}\t{x}" for e, x in rows]
    assert split_lines("a\u2028b\r\nc\n") == ["a\u2028b", "c"] and split_lines("") == []
