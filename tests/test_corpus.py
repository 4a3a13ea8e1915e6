"""Corpus preparation: every source format, the paper's filters, and every bad input."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.corpus import CorpusConfig, fingerprint_rows, list_corpora, open_corpus, prepare_corpus
from mmkd.corpus_sources import OPUS_BASE_URL, OpusRef, opus_refs
from mmkd.errors import CorpusError

from helpers import one_line


def _tsv(shared: Path) -> str:
    return str(shared / "parallel/tatoeba_challenge/eng-fra.tsv")


def _prepare_cli(tmp_path, shared, *args):
    return CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--tsv", _tsv(shared), "--min-tokens", "3",
                                     "--data-dir", str(tmp_path / "d"), "--quiet", *args])


def one_line_error(r, *fragments):
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    for fragment in fragments:
        assert fragment in r.output, r.output


EUROPARL = ("parallel/europarl_v7_fr-en/europarl-v7.fr-en.en", "parallel/europarl_v7_fr-en/europarl-v7.fr-en.fr")


def _moses(shared):
    return tuple(str(shared / p) for p in EUROPARL)


def _write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def _opus_zip(path: Path, shared, corpus="Europarl", pair="en-fr", truncate=False) -> Path:
    en, fr = (shared / p for p in EUROPARL)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("README", "OPUS sample")
        z.write(en, f"{corpus}.{pair}.en")
        z.write(fr, f"{corpus}.{pair}.fr")
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def _prepare(tmp_path, **kw):
    return prepare_corpus(CorpusConfig(pair=kw.pop("pair", "en-fr"), data_dir=str(tmp_path / "d"), **kw), progress=False)


def test_corpus_prepare_overwrite_never_deletes_a_folder_named_like_its_files(tmp_path, shared):
    tsv = shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv"
    args = ["corpus", "prepare", "en-fr", "--tsv", str(tsv), "--data-dir", str(tmp_path), "--max-pairs", "20",
            "--min-tokens", "3", "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    folder = tmp_path / "corpora" / "en-fr"
    (folder / "pairs.arrow").unlink()
    (folder / "pairs.arrow").mkdir()
    (folder / "pairs.arrow" / "mine.txt").write_text("mine")
    one_line(CliRunner().invoke(main, [*args, "--overwrite"]), "holds files mmkd did not write")
    assert (folder / "pairs.arrow" / "mine.txt").read_text() == "mine"


def test_hf_dataset_pointing_at_a_folder_of_tsvs_is_one_line(tmp_path, shared):
    folder = tmp_path / "tsvs"
    folder.mkdir()
    shutil.copy(shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv", folder / "train.tsv")
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--hf-dataset", str(folder), "--data-dir",
                                  str(tmp_path / "d"), "--quiet"])
    one_line(r, "--hf-dataset")


@pytest.mark.parametrize("content", [b"", "en\tfr\n".encode("utf-16")])
def test_an_empty_or_utf16_pairs_file_is_one_line(tmp_path, tiny_student, content):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_bytes(content)
    r = CliRunner().invoke(main, ["eval", "retrieval", "--model", tiny_student, "--pairs", str(pairs)])
    one_line(r, "pairs.tsv")


def test_a_nul_byte_deep_in_a_corpus_file_is_refused(tmp_path, shared):
    lines = (shared / "parallel" / "tatoeba_challenge" / "eng-fra.tsv").read_text(encoding="utf-8").splitlines()[:200]
    lines[150] = lines[150].replace(" ", " \x00", 1)
    tsv = tmp_path / "x.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert tsv.read_bytes().index(b"\x00") > 4096
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--tsv", str(tsv), "--data-dir", str(tmp_path / "d"),
                                  "--quiet", "--min-tokens", "1"])
    one_line(r, "line 151: a NUL byte")


def test_a_users_file_in_the_output_folder_is_never_deleted(tmp_path, shared):
    assert _prepare_cli(tmp_path, shared).exit_code == 0
    out = tmp_path / "d" / "corpora" / "en-fr"
    note = out / "NOTES.txt"
    note.write_text("my notes")
    one_line_error(_prepare_cli(tmp_path, shared), "already holds a prepared corpus; pass --overwrite")
    one_line_error(_prepare_cli(tmp_path, shared, "--overwrite"), "holds files mmkd did not write (NOTES.txt)")
    assert note.read_text() == "my notes"
    note.unlink()
    before = open_corpus(str(out)).fingerprint
    r = _prepare_cli(tmp_path, shared, "--overwrite", "--seed", "3")
    assert r.exit_code == 0 and open_corpus(str(out)).fingerprint != before
    assert sorted(p.name for p in out.parent.iterdir()) == ["en-fr"]     # no temporary folders left


def test_a_folder_mmkd_did_not_make_is_not_replaced(tmp_path, shared):
    mine = tmp_path / "d" / "corpora" / "en-fr"
    mine.mkdir(parents=True)
    (mine / "data.txt").write_text("keep me")
    one_line_error(_prepare_cli(tmp_path, shared, "--overwrite"), "is not a prepared corpus; mmkd will not replace it")
    assert (mine / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["..", "../x", "/tmp/somewhere", "a/b", ".hidden"])
def test_names_are_one_folder_name(tmp_path, shared, name):
    one_line_error(_prepare_cli(tmp_path, shared, "--name", name), "a corpus name is one folder name")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").rglob("*.arrow"))


def test_a_pair_cannot_escape_the_corpora_folder(tmp_path, shared):
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr/../../x", "--tsv", _tsv(shared),
                                  "--data-dir", str(tmp_path / "d"), "--quiet"])
    one_line_error(r, "must look like 'en-XX'")
    assert not any(tmp_path.rglob("*.arrow"))


@pytest.mark.parametrize("key,value", [("max_pairs", "0"), ("max_pairs", "-3"), ("max_tokens", "0"),
                                       ("min_tokens", "200")])
def test_impossible_counts_are_refused(tmp_path, shared, key, value):
    one_line_error(_prepare_cli(tmp_path, shared, f"{key}={value}"), f"{key}={value}")
    assert not (tmp_path / "d" / "corpora" / "en-fr").exists()


def test_a_folder_given_as_a_file(tmp_path):
    for option in (["--tsv", str(tmp_path)], ["--zip", str(tmp_path)], ["--moses", str(tmp_path), str(tmp_path)]):
        r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", *option, "--data-dir", str(tmp_path / "d"), "--quiet"])
        one_line_error(r, f"{tmp_path}: is a folder")


def test_a_file_where_a_folder_should_be(tmp_path, shared):
    (tmp_path / "d").write_text("not a folder")
    one_line_error(_prepare_cli(tmp_path, shared), "is a file, not a folder; choose another --data-dir")
    (tmp_path / "d").unlink()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "corpora").write_text("x")
    one_line_error(_prepare_cli(tmp_path, shared), "corpora is a file, not a folder")
    assert list_corpora(str(tmp_path / "d")) == []


def test_utf16_is_named_and_a_utf8_bom_is_not_text(tmp_path, shared):
    rows = Path(_tsv(shared)).read_text(encoding="utf-8").splitlines()[:50]
    (tmp_path / "u16.tsv").write_text("\n".join(rows) + "\n", encoding="utf-16")
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--tsv", str(tmp_path / "u16.tsv"),
                                  "--data-dir", str(tmp_path / "d"), "--quiet"])
    one_line_error(r, "u16.tsv: UTF-16", "iconv")
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + ("\n".join(rows) + "\n").encode())
    corpus = open_corpus(str(prepare_corpus(CorpusConfig(pair="en-fr", tsv=str(tmp_path / "bom.tsv"), min_tokens=1,
                                                         data_dir=str(tmp_path / "d")), progress=False)))
    assert not any(s.startswith("\ufeff") for s in corpus.table.column("en").to_pylist())
    assert rows[0].split("\t")[0] in corpus.table.column("en").to_pylist()


def test_a_missing_length_tokenizer_is_one_line(tmp_path, shared):
    one_line_error(_prepare_cli(tmp_path, shared, f"length_tokenizer={tmp_path / 'nope'}"),
                    "length_tokenizer", "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_data_dir(tmp_path, shared):  # pragma: no cover - CI runs as root
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o500)
    one_line_error(_prepare_cli(tmp_path, shared), "cannot write")


def test_disk_full_leaves_nothing_and_says_so(tmp_path, shared, monkeypatch):
    """The Arrow write fails as on a full disk: one line, no corpus, no temporary folder."""
    import pyarrow as pa

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "d" / "corpora"))
    monkeypatch.setattr(pa, "OSFile", full)
    one_line_error(_prepare_cli(tmp_path, shared), "No space left on device", "free some space")
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


def test_filters_count_every_drop_on_hand_made_data(tmp_path):
    long = " ".join(["word"] * 130)
    en = ["one two three", "", "a b c d e", "a b c d e", long, "ok fine then now", "x"]
    fr = ["un deux trois", "vide", "a b c d e", "a b c d e", long, "d'accord très bien", "y"]
    cfg = CorpusConfig(pair="en-fr", data_dir=str(tmp_path), min_tokens=3, max_tokens=128,
                       moses=(_write(tmp_path / "c.en", "\n".join(en) + "\n"),
                              _write(tmp_path / "c.fr", "\n".join(fr) + "\n")))
    meta = json.loads((prepare_corpus(cfg, progress=False) / "meta.json").read_text())
    # "x"/"y": 1 word < 3; long: 130 words > 128; "a b c d e" twice: one duplicate; "" empty.
    assert meta["dropped"] == {"empty": 1, "too_short": 1, "too_long": 1, "duplicate": 1, "pruned": 0}
    assert meta["n_pairs"] == 3 and meta["read"] == 7
    corpus = open_corpus("en-fr", str(tmp_path))
    assert sorted(corpus.table.column("source_line").to_pylist()) == [1, 3, 6]
    assert corpus.table.column("pair_id").to_pylist() == [0, 1, 2]
    en_rows, fr_rows = corpus.rows([0, 1, 2])
    assert corpus.fingerprint == fingerprint_rows(en_rows, fr_rows)


def test_real_europarl_sample_prunes_with_a_seeded_shuffle(tmp_path, shared):
    base = dict(pair="en-fr", moses=_moses(shared), max_pairs=500)
    a = prepare_corpus(CorpusConfig(**base, data_dir=str(tmp_path / "a"), seed=1), progress=False)
    b = prepare_corpus(CorpusConfig(**base, data_dir=str(tmp_path / "b"), seed=1), progress=False)
    c = prepare_corpus(CorpusConfig(**base, data_dir=str(tmp_path / "c"), seed=2), progress=False)
    ma, mb, mc = (json.loads((p / "meta.json").read_text()) for p in (a, b, c))
    assert ma["n_pairs"] == 500
    # 6 pairs of the sample have an empty side (MANIFEST.md).
    assert ma["dropped"]["empty"] == 6
    assert ma["dropped"]["pruned"] == ma["read"] - sum(v for k, v in ma["dropped"].items() if k != "pruned") - 500
    assert ma["fingerprint"] == mb["fingerprint"] != mc["fingerprint"]
    assert (a / "pairs.arrow").read_bytes() == (b / "pairs.arrow").read_bytes()


def test_tsv_source(tmp_path, shared):
    out = prepare_corpus(CorpusConfig(pair="en-zh", data_dir=str(tmp_path), min_tokens=1,
                                      tsv=str(shared / "parallel/tatoeba_challenge/eng-zho.tsv")), progress=False)
    corpus = open_corpus(str(out))
    assert len(corpus) > 2900 and corpus.pair == "en-zh"
    en, zh = corpus.rows([0])
    assert en[0] and zh[0]


def test_opus_zip_gives_the_same_corpus_as_the_moses_files(tmp_path, shared):
    z = _opus_zip(tmp_path / "en-fr.txt.zip", shared)
    a = open_corpus(str(prepare_corpus(CorpusConfig(pair="en-fr", zip=str(z), data_dir=str(tmp_path / "z")), progress=False)))
    b = open_corpus(str(prepare_corpus(CorpusConfig(pair="en-fr", moses=_moses(shared), data_dir=str(tmp_path / "m")), progress=False)))
    assert a.fingerprint == b.fingerprint and len(a) == len(b) > 2000


def test_builtin_opus_table_downloads_through_the_real_path(tmp_path, shared):
    """No source given: the paper's corpus URL is fetched (here from a local file:// mirror laid out
    like the OPUS object store) into data/downloads and read as a Moses zip."""
    ref = opus_refs("en-fr")[0]
    assert ref == OpusRef("Europarl", "v8", "fr")
    assert ref.url() == f"{OPUS_BASE_URL}/OPUS-Europarl/v8/moses/en-fr.txt.zip"   # built, never fetched here
    assert opus_refs("en-de")[0].url().endswith("/OPUS-Europarl/v8/moses/de-en.txt.zip")
    mirror = tmp_path / "mirror" / "OPUS-Europarl" / "v8" / "moses"
    mirror.mkdir(parents=True)
    _opus_zip(mirror / "en-fr.txt.zip", shared)
    cfg = CorpusConfig(pair="en-fr", data_dir=str(tmp_path / "data"), opus_base_url=f"file://{tmp_path / 'mirror'}")
    corpus = open_corpus(str(prepare_corpus(cfg, progress=False)))
    assert corpus.meta["sources"] == ["opus:Europarl/v8"]
    assert (tmp_path / "data" / "downloads" / "Europarl-v8-en-fr.txt.zip").is_file()
    assert len(corpus) > 2000


def test_hf_dataset_with_translation_column(tmp_path, shared):
    """A dataset folder in the hub's layout (what `load_dataset(name, config)` reads)."""
    rows = [line.split("\t") for line in (shared / "parallel/tatoeba_challenge/eng-spa.tsv").read_text().splitlines()[:200]]
    ds_dir = tmp_path / "opus_like"
    ds_dir.mkdir()
    with open(ds_dir / "train.jsonl", "w") as f:
        for en, es in rows:
            f.write(json.dumps({"translation": {"en": en, "es": es}}, ensure_ascii=False) + "\n")
    cfg = CorpusConfig(pair="en-es", hf_dataset=str(ds_dir), min_tokens=1, data_dir=str(tmp_path / "d"))
    corpus = open_corpus(str(prepare_corpus(cfg, progress=False)))
    assert len(corpus) == len({tuple(r) for r in rows})
    assert set(corpus.table.column("en").to_pylist()) <= {r[0] for r in rows}


def test_hf_dataset_with_two_text_columns_as_sentence_transformers_lays_them_out(tmp_path, shared):
    """parallel-sentences-* on the hub: rows {"english": ..., "non_english": ...} (`--hf-columns`)."""
    rows = [line.split("\t") for line in (shared / "parallel/tatoeba_challenge/eng-deu.tsv").read_text().splitlines()[:150]]
    ds_dir = tmp_path / "parallel-sentences-like"
    ds_dir.mkdir()
    with open(ds_dir / "train.jsonl", "w") as f:
        for en, de in rows:
            f.write(json.dumps({"english": en, "non_english": de}, ensure_ascii=False) + "\n")
    cfg = CorpusConfig(pair="en-de", hf_dataset=str(ds_dir), hf_columns="english,non_english", min_tokens=1,
                       data_dir=str(tmp_path / "d"))
    corpus = open_corpus(str(prepare_corpus(cfg, progress=False)))
    assert len(corpus) == len({tuple(r) for r in rows})
    pairs = set(zip(corpus.table.column("en").to_pylist(), corpus.table.column("x").to_pylist()))
    assert pairs <= {tuple(r) for r in rows}
    assert corpus.meta["sources"] == [f"hf:{ds_dir}[english,non_english]"]
    r = CliRunner().invoke(main, ["corpus", "prepare", "en-de", "--hf-dataset", str(ds_dir), "--hf-columns",
                                  "english,german", "--data-dir", str(tmp_path / "e"), "--quiet"])
    assert r.exit_code == 2 and "no column 'german' (columns: english, non_english)" in r.output, r.output
    assert r.output.count("\n") == 1


def test_mismatched_line_counts_name_both_files(tmp_path):
    en = _write(tmp_path / "a.en", "one\ntwo\nthree\n")
    fr = _write(tmp_path / "a.fr", "un\ndeux\n")
    with pytest.raises(CorpusError, match=r"a\.en has 3 lines but .*a\.fr has 2"):
        _prepare(tmp_path, moses=(en, fr))


def test_empty_side_is_an_error(tmp_path):
    en = _write(tmp_path / "a.en", "one\n")
    fr = _write(tmp_path / "a.fr", "")
    with pytest.raises(CorpusError, match=r"a\.fr: the file is empty"):
        _prepare(tmp_path, moses=(en, fr))


def test_invalid_utf8_names_file_and_line(tmp_path):
    en = _write(tmp_path / "a.en", b"fine line one two\nbad \xff\xfe bytes\n")
    fr = _write(tmp_path / "a.fr", "ligne\nligne\n")
    with pytest.raises(CorpusError, match=r"a\.en line 2: invalid UTF-8"):
        _prepare(tmp_path, moses=(en, fr))


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.en: no such file"):
        _prepare(tmp_path, moses=(str(tmp_path / "nope.en"), str(tmp_path / "nope.fr")))


def test_unknown_pair_names(tmp_path):
    with pytest.raises(CorpusError, match=r"no built-in OPUS source for 'en-xx'.*en-ar, en-bg"):
        _prepare(tmp_path, pair="en-xx")
    with pytest.raises(CorpusError, match=r"must look like 'en-XX'"):
        _prepare(tmp_path, pair="fr-en")


def test_overlong_line(tmp_path):
    en = _write(tmp_path / "a.en", "short\n" + "x" * 50 + "\n")
    fr = _write(tmp_path / "a.fr", "court\nlong\n")
    with pytest.raises(CorpusError, match=r"a\.en line 2: 50 characters, over the limit of 40"):
        _prepare(tmp_path, moses=(en, fr), max_line_chars=40)


def test_truncated_zip(tmp_path, shared):
    z = _opus_zip(tmp_path / "en-fr.txt.zip", shared, truncate=True)
    with pytest.raises(CorpusError, match=r"en-fr\.txt\.zip: .*truncated"):
        _prepare(tmp_path, zip=str(z))


def test_tsv_with_wrong_column_count(tmp_path):
    t = _write(tmp_path / "p.tsv", "hello\tbonjour\nno tab here\n")
    with pytest.raises(CorpusError, match=r"p\.tsv line 2: expected 2 tab-separated columns"):
        _prepare(tmp_path, tsv=t)


def test_unknown_corpus_name_lists_what_exists_and_how_to_make_it(data_dir):
    with pytest.raises(CorpusError) as e:
        open_corpus("en-hi", str(data_dir))
    msg = str(e.value)
    assert "Available in" in msg and "en-de, en-fr" in msg and "mmkd corpus prepare en-hi" in msg


def test_cli_prepare_and_errors_exit_2(tmp_path, shared):
    runner = CliRunner()
    r = runner.invoke(main, ["corpus", "prepare", "en-fr", "--moses", *_moses(shared), "--max-pairs", "50",
                             "--data-dir", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "50 pairs kept" in r.output
    r = runner.invoke(main, ["corpus", "list", "--data-dir", str(tmp_path)])
    assert r.output.startswith("en-fr\ten-fr\t50 pairs")
    r = runner.invoke(main, ["corpus", "prepare", "en-fr", "--moses", "missing.en", "missing.fr",
                             "--data-dir", str(tmp_path), "--overwrite"])
    assert r.exit_code == 2 and "error: missing.en: no such file" in r.output
