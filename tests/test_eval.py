"""Evaluation: metric functions on hand-worked examples; every task end to end on a tiny model over
small slices of the real shared files; bad inputs give clear errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.eval.data import EvalDataError, XNLI, read_pair_tsv
from mmkd.eval.metrics import accuracy, exact_match, f1_score, normalize_answer, retrieval_accuracy, squad_scores


def _xnli_args(model, shared, out, *extra):
    return ["eval", "xnli", "--model", model, "--eval-data-dir", str(shared), "--train-file",
            str(shared / "xnli" / "dev-en.tsv"), "--max-train-examples", "96", "--max-eval-examples", "24",
            "--epochs", "1", "--batch-size", "16", "--out", str(out), *extra]


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1", "invalid"])
def test_evaluation_files_not_in_utf8_name_the_file_and_line(tmp_path, encoding):
    from mmkd.eval.data import XNLI, EvalDataError, read_pair_tsv, read_squad

    rows = "A man sleeps.\tNobody sleeps.\tcontradiction\nLe café est chaud.\tIl fait froid.\tneutral\n"
    data = {"utf-16": rows.encode("utf-16"), "latin-1": rows.encode("latin-1"),
            "invalid": rows.encode("utf-8").replace("é".encode(), b"\xc3\x28")}[encoding]
    path = tmp_path / "test-fr.tsv"
    path.write_bytes(data)
    with pytest.raises(EvalDataError) as e:
        read_pair_tsv(path, XNLI)
    assert str(e.value).startswith(str(path)) and ("UTF-16" in str(e.value) if encoding == "utf-16"
                                                   else "line 2: invalid UTF-8" in str(e.value)), e.value
    squad = tmp_path / "xquad.fr.json"
    squad.write_bytes(json.dumps({"data": [{"paragraphs": [{"context": "é", "qas": []}]}]}, ensure_ascii=False)
                      .encode("utf-16" if encoding == "utf-16" else "latin-1"))
    with pytest.raises(EvalDataError, match=str(squad)):
        read_squad(squad)


def test_squad_json_of_the_wrong_shape_is_one_line(tmp_path):
    from mmkd.eval.data import EvalDataError, read_squad

    good = {"context": "Paris is in France.", "qas": [{"id": "q1", "question": "Where is Paris?",
                                                         "answers": [{"text": "France", "answer_start": 12}]}]}
    cases = {"no data": ({"version": "1.1"}, "'data' is missing, not list"),
             "a list": ([1, 2], "the top level is list, not dict"),
             "no paragraphs": ({"data": [{"title": "x"}]}, "data[0].paragraphs is missing"),
             "no answer_start": ({"data": [{"paragraphs": [{**good, "qas": [{**good["qas"][0], "answers": [
                 {"text": "France"}]}]}]}]}, "answer_start is missing, not int"),
             "start outside": ({"data": [{"paragraphs": [{**good, "qas": [{**good["qas"][0], "answers": [
                 {"text": "France", "answer_start": 99}]}]}]}]}, "answer_start 99 is outside its context")}
    for name, (data, fragment) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(EvalDataError) as e:
            read_squad(path)
        assert fragment in str(e.value) and str(path) in str(e.value), (name, e.value)
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [good]}]}))
    assert [q.id for q in read_squad(path)] == ["q1"]


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("theatre") == "theatre"            # 'the' only as a word
    # SQuAD v1.1 (XTREME's XQuAD): ASCII punctuation only, a/an/the in every language, no other articles.
    assert normalize_answer("«Die Katze»", "de") == "«die katze»"
    assert normalize_answer("a casa", "es") == "casa" and normalize_answer("la casa", "es") == "la casa"
    assert normalize_answer("北京大学。", "zh") == "北京大学。"         # "。" is not ASCII punctuation


def test_squad_and_mlqa_scoring_by_hand():
    """Worked out by hand from the two official scripts' rules (SQuAD v1.1's evaluate-v1.1.py, MLQA's
    mlqa_evaluation_v1.py)."""
    from mmkd.eval.metrics import answer_tokens

    # MLQA: Unicode punctuation, each language's articles.
    assert normalize_answer("«Die Katze»", "de", "mlqa") == "katze"
    assert normalize_answer("la casa", "es", "mlqa") == "casa"
    assert normalize_answer("the end", "en", "mlqa") == "end"
    assert normalize_answer("الكتاب", "ar", "mlqa") == "كتاب"          # every "ال" goes
    assert normalize_answer("भारत।", "hi", "mlqa") == "भारत"            # the danda is punctuation (Po)
    assert answer_tokens("北京大学 in 2008。", "zh", "mlqa") == ["北", "京", "大", "学", "in", "2008"]
    # Chinese F1: SQuAD sees one token per answer, MLQA one per character.
    # pred 北京大学 (4 chars) vs gold 北京 (2): 2 common; P = 2/4, R = 2/2, F1 = 2·0.5·1/1.5 = 2/3.
    assert f1_score("北京大学", "北京", "zh", "squad") == 0.0
    assert f1_score("北京大学", "北京", "zh", "mlqa") == pytest.approx(2 / 3)
    # German "die Katze im Haus" vs gold "Katze": SQuAD keeps "die" (4 tokens, 1 common: P = 1/4, R = 1,
    # F1 = 0.4); MLQA drops it (3 tokens: P = 1/3, R = 1, F1 = 0.5).
    assert f1_score("die Katze im Haus", "Katze", "de", "squad") == pytest.approx(0.4)
    assert f1_score("die Katze im Haus", "Katze", "de", "mlqa") == pytest.approx(0.5)
    # Spanish "a" is an article to SQuAD's English rule: "a Madrid" == "Madrid" under squad, not under mlqa
    # (mlqa: tokens ["a", "madrid"] vs ["madrid"]: P = 1/2, R = 1, F1 = 2/3; EM 0).
    assert exact_match("a Madrid", "Madrid", "es", "squad") == 1.0
    assert exact_match("a Madrid", "Madrid", "es", "mlqa") == 0.0
    assert f1_score("a Madrid", "Madrid", "es", "mlqa") == pytest.approx(2 / 3)
    # Several gold answers: the best one counts; a missing prediction scores 0.
    scores = squad_scores({"q1": "Katze", "q2": "Hund"}, {"q1": ["die Katze", "eine Katze"], "q2": ["Pferd"],
                                                         "q3": ["Maus"]}, "de", "mlqa")
    assert scores == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 / 3)}
    with pytest.raises(ValueError, match="MLQA's scoring is defined for en, es, de, vi, ar, hi, zh only, not 'ru'"):
        f1_score("a", "b", "ru", "mlqa")


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
    # pred tokens: [eiffel, tower, in, paris], gold: [eiffel, tower] -> P = 2/4, R = 1, F1 = 2/3
    assert f1_score("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 / 3)
    # pred [eiffel, tower, paris] -> P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Eiffel Tower, Paris", "the Eiffel Tower") == pytest.approx(0.8)
    assert f1_score("London", "Paris") == 0.0
    scores = squad_scores({"q1": "Paris", "q2": "in 1889"}, {"q1": ["Paris", "paris France"], "q2": ["1889"]})
    # q1: EM 1, F1 1. q2: EM 0, F1: [in, 1889] vs [1889] -> P 1/2, R 1 -> 2/3.
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_chinese_answers_are_scored_by_character_under_mlqa_and_whole_under_squad():
    # MLQA: pred 北京大学 (4 chars), gold 北京 (2 chars): P = 2/4, R = 1 -> F1 = 2/3.
    assert f1_score("北京大学", "北京", "zh", "mlqa") == pytest.approx(2 / 3)
    assert exact_match("“北京”。", "北京", "zh", "mlqa") == 1.0      # Chinese punctuation removed
    # SQuAD v1.1 (XTREME): no spaces, so one token; its punctuation is not ASCII, so it stays.
    assert f1_score("北京大学", "北京", "zh") == 0.0
    assert exact_match("“北京”。", "北京", "zh") == 0.0 and exact_match("北京.", "北京", "zh") == 1.0
    # Latin words inside Chinese stay whole: [2008, 年] vs [2008, 年, 夏] -> P 1, R 2/3 -> F1 0.8
    assert f1_score("2008年", "2008年夏", "zh", "mlqa") == pytest.approx(0.8)


def test_accuracy_and_retrieval_accuracy_by_hand():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 75.0
    with pytest.raises(ValueError):
        accuracy([0], [0, 1])
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.3, 0.1], [0.0, 0.2, 0.7]])   # row 1 picks 0: wrong
    assert retrieval_accuracy(sim) == pytest.approx(200 / 3)
    # Other direction: column j's best row. col 0 -> row 0 (ok), col 1 -> row 1 (ok), col 2 -> row 2 (ok).
    assert retrieval_accuracy(sim.T) == pytest.approx(100.0)


def test_alignment_infonce_by_hand():
    from mmkd.eval.metrics import alignment_infonce

    # 2 x 2 at τ = 1: rows [1, 0] and [0, 1]; each row's loss is -log(e / (e + 1)) = log(1 + 1/e).
    sim = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert alignment_infonce(sim, temperature=1.0) == pytest.approx(math.log(1 + math.exp(-1)))
    # Asymmetric: rows give -log(e^2/(e^2+e^0)) and -log(e^1/(e^1+e^1)); columns -log(e^2/(e^2+e^1)) and
    # -log(e^1/(e^0+e^1)); the loss is the mean of the two directions' means.
    sim = np.array([[2.0, 0.0], [1.0, 1.0]])
    rows = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-1))) / 2
    assert alignment_infonce(sim, temperature=1.0) == pytest.approx((rows + cols) / 2)
    # Vectors that tell nothing apart: ln N; τ scales the similarities.
    assert alignment_infonce(np.ones((5, 5)), temperature=0.05) == pytest.approx(math.log(5))
    assert alignment_infonce(sim, temperature=0.5) == pytest.approx(alignment_infonce(2 * sim, temperature=1.0))


def test_unlabelled_test_file_is_an_error_not_33_percent(tmp_path, shared):
    lines = (shared / "xnli" / "test-fr.tsv").read_text(encoding="utf-8").splitlines()[:5]
    stripped = tmp_path / "test-fr.tsv"
    stripped.write_text("\n".join("\t".join(line.split("\t")[:2]) for line in lines) + "\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"test-fr\.tsv line 1: no label column"):
        read_pair_tsv(stripped, XNLI)


def test_bad_label_and_missing_file(tmp_path):
    f = tmp_path / "x.tsv"
    f.write_text("a\tb\tentailment\nc\td\tmaybe\n")
    with pytest.raises(EvalDataError, match=r"x\.tsv line 2: label 'maybe' is not one of entailment"):
        read_pair_tsv(f, XNLI)
    with pytest.raises(EvalDataError, match=r"nope\.tsv: no such file"):
        read_pair_tsv(tmp_path / "nope.tsv", XNLI)


def test_cli_errors_for_language_code_and_missing_file(tmp_path, tiny_student, shared):
    r = CliRunner().invoke(main, _xnli_args(tiny_student, shared, tmp_path, "--languages", "fr,xx"))
    assert r.exit_code == 2 and "unknown language code 'xx'" in r.output
    r = CliRunner().invoke(main, ["eval", "pawsx", "--model", tiny_student, "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "pawsx" / "dev-en.tsv"), "--languages", "fr",
                                  "--max-train-examples", "32", "--epochs", "1", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "pawsx/test-fr.tsv: no such file" in r.output


def test_xnli_end_to_end_with_seeds_and_oracle(tmp_path, tiny_student, shared):
    out = tmp_path / "xnli"
    r = CliRunner().invoke(main, _xnli_args(tiny_student, shared, out, "--languages", "fr,zh", "--seeds", "1,2",
                                            "--oracle"))
    assert r.exit_code == 0, r.output
    result = json.loads((out / "results.json").read_text())
    assert result["languages"] == ["fr", "zh"] and result["seeds"] == [1, 2]
    for run in result["runs"]:
        # Train = first 90% of the 96 English dev pairs, English dev = the last 10%.
        assert run["train_examples"] == 87 and run["dev_en_examples"] == 9
        for lang in ("fr", "zh"):
            acc = run["test"][lang]
            assert 0 <= acc <= 100 and math.isclose(acc * 24 / 100, round(acc * 24 / 100))   # k of 24 right
    avg = result["summary"]["avg"]
    assert avg["mean"] == pytest.approx(np.mean([np.mean(list(r["test"].values())) for r in result["runs"]]))
    assert set(result["summary_oracle"]) == {"fr", "zh"}
    # Each seed's predicted labels, one per test row, in XTREME's layout; they re-score to the reported accuracy.
    from mmkd.eval.data import XNLI as task, load_pair_split

    for run in result["runs"]:
        for lang in ("fr", "zh"):
            labels = (out / run["predictions"] / f"test-{lang}.tsv").read_text().splitlines()
            gold = [task.labels[e.label] for e in load_pair_split(task, lang, "test", str(shared), 24)]
            assert len(labels) == 24 and set(labels) <= set(task.labels)
            assert 100 * sum(a == b for a, b in zip(labels, gold)) / 24 == pytest.approx(run["test"][lang])
    assert "| English dev |" in (out / "results.md").read_text()


def test_seeds_run_at_once_in_worker_processes_give_the_results_they_give_in_turn(tmp_path, tiny_student, shared):
    """--seed-processes 2 (on this CPU; on a machine with GPUs, one seed per GPU): each seed's scores and
    predictions equal those of the seeds run one after another with the same threads per process."""
    import torch

    from mmkd.eval.runner import run_task
    from mmkd.eval.settings import EvalConfig

    cfg = EvalConfig(task="xnli", model=tiny_student, data_dir=str(shared), train_file=str(shared / "xnli" / "dev-en.tsv"),
                     languages=["fr"], seeds=[3, 1], max_train_examples=48, max_eval_examples=24, epochs=1.0,
                     batch_size=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # what each of the two workers gets on a 2-core machine
    try:
        in_turn = run_task(cfg)
    finally:
        torch.set_num_threads(threads)
    at_once = run_task(dataclasses.replace(cfg, seed_processes=2))
    assert [r["seed"] for r in at_once["runs"]] == [3, 1]
    for a, b in zip(in_turn["runs"], at_once["runs"]):
        assert a == b
    assert at_once["config"]["seed_processes"] == 2 and in_turn["summary"] == at_once["summary"]


def test_pawsx_end_to_end(tmp_path, tiny_student, shared):
    out = tmp_path / "pawsx"
    r = CliRunner().invoke(main, ["eval", "pawsx", "--model", tiny_student, "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "pawsx" / "dev-en.tsv"), "--languages", "de,zh",
                                  "--max-train-examples", "64", "--max-eval-examples", "20", "--epochs", "1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "results.json").read_text())
    assert set(result["runs"][0]["test"]) == {"de", "zh"}
    # --test-offset: the rows after the first N (kept apart from rows a choice was made on). PAWS-X
    # test-de has 2,000 rows: offset 1,990 leaves 10 of the 20 asked; 2,000 leaves none (an error).
    r = CliRunner().invoke(main, ["eval", "pawsx", "--model", tiny_student, "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "pawsx" / "dev-en.tsv"), "--languages", "de",
                                  "--max-train-examples", "16", "--max-eval-examples", "20", "--epochs", "1",
                                  "--test-offset", "1990", "--out", str(tmp_path / "offset")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "offset" / "results.json").read_text())["runs"][0]["test_examples"] == {"de": 10}
    r = CliRunner().invoke(main, ["eval", "pawsx", "--model", tiny_student, "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "pawsx" / "dev-en.tsv"), "--languages", "de",
                                  "--max-train-examples", "16", "--test-offset", "2000", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "test_offset=2000: no pawsx test examples left for de" in r.output


def test_xquad_end_to_end_with_strided_windows(tmp_path, tiny_student, shared):
    out = tmp_path / "xquad"
    r = CliRunner().invoke(main, ["eval", "xquad", "--model", tiny_student, "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "english_qa_train" / "tydiqa-goldp-v1.1-en-train.first1500.json"),
                                  "--languages", "en,zh", "--max-train-examples", "40", "--max-eval-examples", "8",
                                  "--epochs", "1", "--max-length", "96", "--doc-stride", "32", "--batch-size", "8",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "results.json").read_text())
    run = result["runs"][0]
    assert set(run["test"]) == {"en", "zh"} and set(run["test_exact_match"]) == {"en", "zh"}
    assert all(0 <= v <= 100 for v in run["test"].values())
    # Scored as XTREME scores XQuAD, and the predictions re-score to the same numbers (XTREME's layout).
    from mmkd.eval.data import load_qa

    assert result["scoring"] == "squad" and run["predictions"] == "predictions/seed-1/xquad"
    for lang in ("en", "zh"):
        predicted = json.loads((out / run["predictions"] / f"test-{lang}.json").read_text())
        gold = {e.id: [a["text"] for a in e.answers] for e in load_qa(lang, None, str(shared), 8)}
        assert set(predicted) == set(gold)
        assert squad_scores(predicted, gold, lang)["f1"] == pytest.approx(run["test"][lang])
    r = CliRunner().invoke(main, ["eval", "xquad", "--model", tiny_student, "--eval-data-dir", str(shared),
                                  "--languages", "en,ru", "--qa-scoring", "mlqa", "--out", str(tmp_path / "no")])
    assert r.exit_code == 2 and "qa_scoring=mlqa: MLQA's script scores" in r.output and "not ru" in r.output


def test_qa_decoding_recovers_gold_spans_across_windows(tiny_student, shared):
    """With logits that point at the gold span, decoding over strided windows must return the gold
    answer text exactly: checks featurize's token positions and predict's offset mapping."""
    import torch
    from transformers import AutoTokenizer

    from mmkd.eval.data import read_squad
    from mmkd.eval.qa import featurize, predict

    tok = AutoTokenizer.from_pretrained(tiny_student)
    examples = read_squad(shared / "xquad" / "xquad.en.json", limit=12)
    train_feats = featurize(tok, examples, 96, 32, train=True)

    class Oracle(torch.nn.Module):
        """Scores 10 at the training features' gold start/end, 0 elsewhere."""
        def forward(self, input_ids, **kw):
            rows = [next(i for i in range(len(train_feats["input_ids"]))
                         if torch.equal(train_feats["input_ids"][i], ids)) for ids in input_ids]
            start = torch.zeros(input_ids.shape)
            end = torch.zeros(input_ids.shape)
            for b, r in enumerate(rows):
                s, e = int(train_feats["start_positions"][r]), int(train_feats["end_positions"][r])
                if s > 0:
                    start[b, s], end[b, e] = 10.0, 10.0
            return type("Out", (), {"start_logits": start, "end_logits": end})()

    assert len(train_feats["input_ids"]) > len(examples)      # contexts really were split into windows
    preds = predict(Oracle(), featurize(tok, examples, 96, 32, train=False), examples, n_best=5, max_answer_length=60)
    for ex in examples:
        assert preds[ex.id].strip() == ex.answers[0]["text"].strip(), ex.id


def test_questions_longer_than_the_window_allows_are_cut_at_a_token_boundary(tiny_student, shared):
    from transformers import AutoTokenizer

    from mmkd.eval.data import read_squad
    from mmkd.eval.qa import cut_questions, question_limit

    tok = AutoTokenizer.from_pretrained(tiny_student)
    assert question_limit(tok, 384, 128, 64) == 64                     # BERT's SQuAD recipe
    assert question_limit(tok, 96, 32, 64) == 96 - 32 - 3 - 1          # [CLS] q [SEP] c [SEP], more context than overlap
    short = read_squad(shared / "xquad" / "xquad.en.json", limit=3)
    long = [type(e)(e.id, " ".join([e.question] * 12), e.context, e.answers) for e in short]
    ids = lambda q: tok(q, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert all(len(ids(e.question)) > 20 for e in long)
    cut, n = cut_questions(tok, short + long, 20)
    assert n == 3 and cut[:3] == short                                  # short questions untouched
    for before, after in zip(long, cut[3:]):
        assert before.question.startswith(after.question) and after.context == before.context
        assert 18 <= len(ids(after.question)) <= 20
        assert ids(after.question)[:15] == ids(before.question)[:15]


def test_xquad_with_a_test_question_longer_than_the_window(tmp_path, tiny_student, shared):
    """A question of more tokens than the window minus its overlap made the tokenizer panic after the
    whole fine-tuning (an English tokenizer splits an Arabic question into ~180 pieces)."""
    data = json.loads((shared / "xquad" / "xquad.en.json").read_text())
    data["data"] = data["data"][:1]
    data["data"][0]["paragraphs"] = data["data"][0]["paragraphs"][:1]
    qa = data["data"][0]["paragraphs"][0]["qas"][0]
    qa["question"] = " ".join([qa["question"]] * 20)
    (tmp_path / "xquad").mkdir()
    (tmp_path / "xquad" / "xquad.en.json").write_text(json.dumps(data))
    r = CliRunner().invoke(main, ["eval", "xquad", "--model", tiny_student, "--eval-data-dir", str(tmp_path),
                                  "--train-file", str(shared / "english_qa_train" / "tydiqa-goldp-v1.1-en-train.first1500.json"),
                                  "--languages", "en", "--max-train-examples", "10", "--epochs", "1",
                                  "--max-length", "96", "--doc-stride", "32", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "xquad en: 1 of " in r.output and "questions cut to 60 tokens" in r.output
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["hyper_parameters"]["question_tokens"] == 60 and 0 <= run["test"]["en"] <= 100


def test_retrieval_end_to_end(tmp_path, tiny_student, shared):
    en = shared / "parallel/ntrex128/newstest2019-src.eng.txt"
    out = tmp_path / "ret"
    r = CliRunner().invoke(main, ["eval", "retrieval", "--model", tiny_student,
                                  "--pairs", f"fr={en},{shared / 'parallel/ntrex128/newstest2019-ref.fra.txt'}",
                                  "--pairs", str(shared / "parallel/tatoeba_challenge/eng-deu.tsv"),
                                  "--pairs", f"identity={en},{en}",
                                  "--max-eval-examples", "50", "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "results.json").read_text())
    assert set(result["sets"]) == {"fr", "eng-deu", "identity"}
    # A sentence is always nearest to itself: the identity set is a check of the whole pipeline.
    assert result["sets"]["identity"]["cls"] == 100.0 and result["sets"]["identity"]["mean"] == 100.0
    assert all(0 <= result["sets"]["fr"][k] <= 100 for k in ("cls_x2en", "cls_en2x", "mean_x2en", "mean_en2x"))


def test_tsne_picture_and_report(tmp_path, tiny_student, tiny_teacher, shared):
    png = tmp_path / "tsne.png"
    r = CliRunner().invoke(main, ["plot", "tsne", "--model", tiny_student, "--model", tiny_teacher,
                                  "--xnli-dir", str(shared / "xnli"), "--languages", "en,fr,de", "-n", "8",
                                  "--out", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two retrieval results -> one comparison table.
    for name, model in (("a", tiny_student), ("b", tiny_teacher)):
        CliRunner().invoke(main, ["eval", "retrieval", "--model", model, "--pairs",
                                  str(shared / "parallel/tatoeba_challenge/eng-fra.tsv"), "--max-eval-examples", "20",
                                  "--out", str(tmp_path / name / "retrieval")])
    r = CliRunner().invoke(main, ["report", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("| model | retrieval") and len(lines) == 4
    assert tiny_student in r.output and tiny_teacher in r.output


def test_window_longer_than_the_model_is_a_clear_error(tmp_path, tiny_student, shared):
    r = CliRunner().invoke(main, ["eval", "xquad", "--model", tiny_student, "--eval-data-dir", str(shared),
                                  "--train-file", str(shared / "english_qa_train" / "tydiqa-goldp-v1.1-en-train.first1500.json"),
                                  "--languages", "en", "--max-train-examples", "8", "--max-eval-examples", "2",
                                  "--out", str(tmp_path)])          # default --max-length 384 > 160 positions
    assert r.exit_code == 2 and "max_length=384 exceeds the model's 160 positions" in r.output


def test_evaluation_follows_the_runs_precision_fp16_with_a_loss_scaler(tmp_path, tiny_student, shared, monkeypatch):
    """`auto` resolves as training's does; fp16 fine-tuning runs its forward under fp16 autocast with
    torch's GradScaler (CPU autocast and the CPU GradScaler exist in this torch, so this is the real
    path, not a stand-in), and the result records the precision."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from mmkd.eval.finetune import fine_tune, resolve_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto") == "no"            # CPU
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("auto") == "bf16" and resolve_precision("no") == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_student, num_labels=3)
    seen, scales = [], []
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    real = torch.amp.GradScaler

    class Recording(real):
        def update(self, *a, **k):
            super().update(*a, **k)
            scales.append(self.get_scale())
    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    ids = torch.randint(5, 100, (8, 12))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(8) % 3}]
    before = model.classifier.weight.detach().clone()
    fine_tune(model, lambda epoch: batches, 1, 2, 1e-3, 0.0, 0.0, lambda: {"dev-en": 0.0}, ["dev-en"], "t",
              precision="fp16")
    assert seen == [torch.float16, torch.float16] and len(scales) == 2
    assert not torch.equal(model.classifier.weight.detach(), before)     # the scaler stepped the optimiser
    seen.clear()
    fine_tune(model, lambda epoch: batches, 1, 1, 1e-3, 0.0, 0.0, lambda: {"dev-en": 0.0}, ["dev-en"], "t",
              precision="no")
    assert seen == [torch.float32] and len(scales) == 2                  # no scaler without fp16

    out = tmp_path / "xnli"
    r = CliRunner().invoke(main, _xnli_args(tiny_student, shared, out, "--languages", "fr", "--mixed-precision", "bf16"))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "results.json").read_text())["runs"][0]["mixed_precision"] == "bf16"


def test_every_task_reads_its_result_through_one_interface():
    """Retrieval is a task like the others: the ablation table's columns, `mmkd report`'s cell and the
    card's summary come from the task, worked out here by hand."""
    from mmkd.eval.tasks import TASKS, task

    assert set(TASKS) == {"xnli", "pawsx", "xquad", "retrieval"}
    zero = {"task": "xnli", "metric": "accuracy", "model": "m", "languages": ["de", "fr"], "seeds": [1, 2],
            "summary": {"de": {"mean": 40.0, "std": 1.0}, "fr": {"mean": 42.5, "std": 0.0},
                        "avg": {"mean": 41.25, "std": 0.5}}, "config": {"test_split": "test"},
            "data": {"hub": {"test": {"id": "facebook/xnli", "revision": "main", "commit": "c" * 40}}}}
    ret = {"task": "retrieval", "model": "m", "average": {"cls": 80.0, "mean": 90.25},
           "sets": {"tatoeba-fr": {"n": 4, "cls": 80.0, "mean": 90.25, "cls_x2en": 75.0, "cls_en2x": 85.0,
                                   "mean_x2en": 90.0, "mean_en2x": 90.5, "cls_infonce": 1.0, "mean_infonce": 0.5}}}
    assert task("xnli").columns(zero) == {"xnli": 41.25} and task("xnli").cell(zero) == "41.2 ± 0.5"
    assert task("retrieval").columns(ret) == {"retrieval": 80.0, "retrieval_mean": 90.25}
    assert task("retrieval").cell(ret) == "80.0 / 90.2"
    card = task("xnli").card(zero)
    assert card["per_language"] == {"de": "40.0 ± 1.0", "fr": "42.5"} and card["values"] == {"de": 40.0, "fr": 42.5}
    assert card["hub_dataset"]["commit"] == "c" * 40
    assert task("retrieval").card(ret)["per_language"] == {"tatoeba-fr": "80.0 / 90.2"}
    assert "| tatoeba-fr | 4 | 75.0 | 85.0 | 90.0 | 90.5 | 1.000 | 0.500 |" in task("retrieval").markdown(ret)
    with pytest.raises(ValueError, match="unknown task 'nli'"):
        task("nli")


def test_an_interrupted_evaluation_run_again_runs_only_the_seeds_it_had_not_finished(tmp_path, tiny_student, shared,
                                                                                      monkeypatch):
    """Each finished seed is kept in OUT/seeds/ as it finishes; the same evaluation run again reuses it
    (same numbers as a run never interrupted) and runs the others; other settings or a changed model
    run it again; results.json replaces the kept seeds."""
    import os

    from mmkd.eval import classify
    from mmkd.eval.runner import run_task, write_result
    from mmkd.eval.seeds import Kept
    from mmkd.eval.settings import EvalConfig

    out = tmp_path / "xnli"
    cfg = EvalConfig(task="xnli", model=tiny_student, data_dir=str(shared), train_file=str(shared / "xnli" / "dev-en.tsv"),
                     languages=["fr"], seeds=[3, 1], max_train_examples=48, max_eval_examples=24, epochs=1.0,
                     batch_size=16, out=str(out))
    real, ran = classify.run_seed, []

    def interrupted_at_seed_1(c, seed):
        ran.append(seed)
        if seed == 1:
            raise KeyboardInterrupt
        return real(c, seed)

    monkeypatch.setattr(classify, "run_seed", interrupted_at_seed_1)
    with pytest.raises(KeyboardInterrupt):
        run_task(cfg)
    assert ran == [3, 1] and sorted(p.name for p in (out / "seeds").iterdir()) == ["seed-3.json"]

    ran.clear()
    monkeypatch.setattr(classify, "run_seed", lambda c, seed: ran.append(seed) or real(c, seed))
    resumed = run_task(dataclasses.replace(cfg, seed_processes=1))      # a setting that changes no result
    assert ran == [1]
    never_interrupted = run_task(dataclasses.replace(cfg, out=None))
    assert ran == [1, 3, 1]
    assert json.dumps(resumed["runs"]) == json.dumps(never_interrupted["runs"])
    assert resumed["summary"] == never_interrupted["summary"]

    kept = lambda c: Kept(out / "seeds", c).load(3)                                      # noqa: E731
    assert kept(dataclasses.replace(cfg, seeds=[3, 1, 2])) is not None                    # more seeds: 3 is the same
    assert kept(dataclasses.replace(cfg, lr=1e-4)) is None                                 # another setting
    weights = next(p for p in sorted(os.scandir(tiny_student), key=lambda e: e.name) if p.name.endswith(".safetensors"))
    stat = os.stat(weights.path)
    os.utime(weights.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))       # a retrained model
    try:
        assert kept(cfg) is None
    finally:
        os.utime(weights.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    write_result(resumed, out)
    assert (out / "results.json").is_file() and not (out / "seeds").exists()
