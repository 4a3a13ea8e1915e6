"""Settings are written once, in their dataclass; presets and files are checked; bad values are one line."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mmkd import settings as st
from mmkd.cli import main
from mmkd.config import TrainConfig
from mmkd.errors import TrainingError
from mmkd.objectives import HeadSettings
from mmkd.settings import SettingsError

from helpers import one_line, train_args


REPO = Path(__file__).resolve().parents[1]


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def _hidden_setting_options() -> set[str]:
    """The generated options no command shows (older scripts' spelling of a setting)."""
    hidden, shown = set(), set()
    for _, cmd in _commands(main):
        for p in cmd.params:
            if isinstance(p, click.Option):
                (hidden if p.hidden and "__" in p.name else shown).update(p.opts + p.secondary_opts)
    return hidden - shown


def test_a_settings_file_nested_50000_deep_is_one_line(tmp_path, cache, tiny_student, data_dir):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50000 + "]" * 50000)
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, tmp_path / "r", data_dir, "--config", str(deep))),
             "deep.json: not a settings file (nested too deeply")


def test_no_command_line_option_carries_a_default_of_a_setting():
    """A setting's default lives in its dataclass only: every generated option defaults to None (so
    `--config` and the dataclass decide), and the path options that are settings too (--out,
    --teacher, --student) leave theirs to the dataclass."""
    checked = 0
    for path, cmd in _commands(main):
        for p in cmd.params:
            generated = p.name.split("__")[0] in ("s", "d", "e") and "__" in p.name
            if generated:
                assert p.default in (None, ()) or str(p.default) == "Sentinel.UNSET", (path, p.name, p.default)
                checked += 1
            elif p.name in ("out", "teacher", "student") and path[-1] in ("train", "ablate", "demo", "cache-teacher"):
                assert p.default is None, (path, p.name, p.default)
    assert checked > 80


def test_no_module_writes_a_settings_value_twice():
    """No `TrainConfig(...)` or `DemoConfig(...)` with literal settings outside the settings module
    and the tests: scenarios are presets (mmkd/presets/*.json), not code."""
    offenders = []
    for path in (REPO / "mmkd").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("TrainConfig", "DemoConfig"):
                literals = [k.arg for k in node.keywords if isinstance(k.value, ast.Constant)]
                if literals:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {literals}")
    assert not offenders


def test_presets_are_complete_files_of_known_settings():
    assert {"paper", "demo"} <= set(st.preset_names())
    paper = st.load(TrainConfig, "paper")
    assert (paper.lr, paper.batch_size, paper.epochs, paper.warmup_ratio, paper.weight_decay) == (2e-5, 256, 15, 0.1, 0.01)
    assert (paper.heads.hidden, paper.heads.out, paper.xwcl.similarity, paper.senta.center) == (768, 128, "dot", False)
    demo = st.load(TrainConfig, "demo")
    assert demo.max_steps and demo.senta.center and demo.struca.alpha == 1.0 and demo.xwcl.temperature == 0.1


def test_the_paper_preset_restates_the_defaults_exactly():
    """presets/paper.json lists the paper's values; the defaults are the paper's: they cannot drift apart."""
    listed = json.loads((REPO / "mmkd" / "presets" / "paper.json").read_text())
    default = TrainConfig()

    def walk(mapping, obj, prefix=""):
        n = 0
        for key, value in mapping.items():
            if key.startswith("_"):
                continue
            if isinstance(value, dict):
                n += walk(value, getattr(obj, key), f"{prefix}{key}.")
            else:
                assert getattr(obj, key) == value, f"paper.json {prefix}{key} = {value!r}, default {getattr(obj, key)!r}"
                n += 1
        return n
    assert walk(listed, default) >= 15
    assert st.load(TrainConfig, "paper") == default


def test_a_preset_extends_another_and_a_cycle_is_one_line(tmp_path):
    small, demo = st.load(TrainConfig, "demo-small"), st.load(TrainConfig, "demo")
    assert (small.max_steps, small.batch_size, small.head_warmup_steps, small.checkpoint_every) == (6, 14, 3, 6)
    import dataclasses
    assert dataclasses.replace(small, max_steps=demo.max_steps, batch_size=demo.batch_size,
                               head_warmup_steps=demo.head_warmup_steps, checkpoint_every=demo.checkpoint_every) == demo
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"_extends": str(b), "lr": 1e-4}))
    b.write_text(json.dumps({"_extends": "demo", "seed": 7}))
    cfg = st.load(TrainConfig, str(a))
    assert (cfg.lr, cfg.seed, cfg.max_steps) == (1e-4, 7, demo.max_steps)       # the nearer file wins
    b.write_text(json.dumps({"_extends": str(a)}))
    with pytest.raises(SettingsError, match="leads back to itself") as e:
        st.load(TrainConfig, str(a))
    assert "\n" not in str(e.value)


def test_config_files_and_run_configs_load_with_old_flat_names(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"alpha": 3.0, "xwcl_temperature": 0.5, "senta": {"center": True}, "lr": 1e-4}))
    cfg = st.load(TrainConfig, str(f))
    assert (cfg.struca.alpha, cfg.xwcl.temperature, cfg.senta.center, cfg.lr) == (3.0, 0.5, True, 1e-4)
    run = tmp_path / "config.json"
    run.write_text(json.dumps({"config": {"lr": 3e-5, "xwcl.similarity": "cosine"}, "mmkd_version": "0.1.0"}))
    cfg = st.load(TrainConfig, str(run))
    assert cfg.lr == 3e-5 and cfg.xwcl.similarity == "cosine"


def test_a_run_config_of_version_1_loads_with_the_heads_under_heads_and_a_newer_version_is_refused(tmp_path):
    """Config version 1 (no "config_version") kept the heads' settings at the top level, as asdict wrote
    them; version 2 nests them under `heads`. Both give the same settings; a version from a newer mmkd
    is one line."""
    import dataclasses

    from mmkd.config import CONFIG_VERSION, from_saved

    now = dataclasses.asdict(TrainConfig(heads=HeadSettings(hidden=32, out=16, norm="layer", teacher="guard",
                                                            teacher_weight=0.5), lr=1e-3))
    old = {k: v for k, v in now.items() if k != "heads"}
    old.update(head_hidden=32, head_out=16, head_norm="layer", teacher_heads="guard", teacher_head_weight=0.5)
    assert from_saved(old, "config.json") == from_saved(now, "config.json", CONFIG_VERSION)
    assert from_saved(old, "config.json").heads == HeadSettings(32, 16, "layer", "guard", 0.5)
    with pytest.raises(TrainingError, match=rf"config.json: config_version 3 was written by a newer mmkd \(this one "
                                            rf"reads versions up to {CONFIG_VERSION}\)"):
        from_saved(now, "config.json", 3)


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "holds a JSON object of settings, not a list"),
    ('"paper"', "not a str"),
    ('{"batch_size": "eight"}', "batch_size='eight': must be a whole number"),
    ('{"lr": null}', "lr: a value is required"),
    ('{"max_steps": 2.5}', "max_steps=2.5: must be a whole number"),
    ('{"seed": "0"}', "seed='0': must be a whole number"),
    ('{"mixed_precision": "fp8"}', "mixed_precision='fp8': choose auto, no, bf16, fp16"),
    ('{"head_norm": "group"}', "heads.norm='group': choose none, batch, layer"),      # the key before config version 2
    ('{"heads": {"norm": "group"}}', "heads.norm='group': choose none, batch, layer"),
    ('{"lrr": 1}', "unknown setting 'lrr'"),
    ("{not json", "not a readable settings file"),
])
def test_a_bad_settings_file_is_one_line_naming_file_and_key(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        st.load(TrainConfig, str(f))
    r = CliRunner().invoke(main, ["train", "--cache", "c", "--config", str(f)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and str(f) in r.output, r.output


@pytest.mark.parametrize("args,message", [
    (["lr=nan"], "lr=nan: must be a finite number"),
    (["lr=1e39"], "lr=1e+39: must be at most 1.0"),
    (["heads.out=0"], "heads.out=0: must be at least 1"),
    (["heads.hidden=0"], "heads.hidden=0: must be at least 1"),
    (["num_workers=-1"], "num_workers=-1: must be at least 0"),
    (["mlm_probability=2"], "mlm_probability=2.0: must be at most 1.0"),
    (["warmup_ratio=5"], "warmup_ratio=5.0: must be at most 1.0"),
    (["max_steps=0"], "max_steps=0: must be at least 1"),
    (["--max-steps", "0"], "max_steps=0: must be at least 1"),       # an older script's hidden option
])
def test_every_option_is_checked_against_its_range_before_anything_runs(tmp_path, args, message):
    r = CliRunner().invoke(main, ["train", "--cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "r").exists()


def test_eval_options_are_checked_too():
    r = CliRunner().invoke(main, ["eval", "xnli", "--model", "m", "batch_size=0"])
    assert r.exit_code == 2 and "batch_size=0: must be at least 1" in r.output


def test_help_is_short_and_points_to_the_settings():
    r = CliRunner().invoke(main, ["train", "--help"])
    assert r.exit_code == 0 and len(r.output.splitlines()) < 70
    assert "mmkd settings train" in r.output and "--config" in r.output and "xwcl.temperature" in r.output
    assert "[KEY=VALUE]..." in r.output
    r = CliRunner().invoke(main, ["settings", "train", "--config", "demo"])
    assert r.exit_code == 0 and "--xwcl-temperature" not in r.output and "τ of eq. (1)." in r.output
    assert any(line.split()[:2] == ["xwcl.temperature", "0.1"] for line in r.output.splitlines())


def test_a_setting_is_key_equals_value_on_top_of_the_config():
    """`mmkd train --config paper struca.alpha=2 max_steps=7`: the preset, then each KEY=VALUE, typed by
    its setting (a list by commas, a bool by true/false, null for an optional one); a key may be its
    option's name; a bad key, value or range is one line naming it."""
    from mmkd.config import TrainConfig

    got = st.load(TrainConfig, "paper", st.assignments(TrainConfig, [
        "struca.alpha=2", "max_steps=7", "without=xwcl,senta", "senta.center=true", "head_lr=null",
        "xwcl-temperature=0.5"], "train"))
    paper = st.load(TrainConfig, "paper")
    assert (got.struca.alpha, got.max_steps, got.without, got.senta.center, got.head_lr, got.xwcl.temperature) == \
           (2.0, 7, ["xwcl", "senta"], True, None, 0.5)
    assert got.lr == paper.lr == 2e-5 and got.batch_size == paper.batch_size
    for item, message in (("alpha", "a setting is KEY=VALUE"), ("struca.beta=1", "'struca.beta': no such setting"),
                          ("max_steps=ten", "max_steps=ten: 'ten' is not a whole number"),
                          ("lr=0", "lr=0.0: must be greater than 0"), ("senta.center=maybe", "is not true or false"),
                          ("without=nope", "'nope': choose")):
        with pytest.raises(st.SettingsError, match=re.escape(message)):
            st.assignments(TrainConfig, [item], "train")


def test_key_value_settings_reach_every_command(tmp_path):
    """train, ablate (train.* and eval.*), demo (its own, and train.*), eval, cache-teacher and corpus
    prepare take KEY=VALUE; each error is one line before any work."""
    for args, message in ((["train", "--cache", str(tmp_path), "struca.alpha=-1"], "struca.alpha=-1.0: must be at least 0"),
                          (["ablate", "--cache", str(tmp_path), "train.lr=abc"], "lr=abc: 'abc' is not a number"),
                          (["ablate", "--cache", str(tmp_path), "eval.seeds=x"], "seeds=x: 'x' is not a whole number"),
                          (["demo", "train.nope=1"], "'nope': no such setting of mmkd train"),
                          (["demo", "xnli_seed=-1"], "xnli_seed=-1: must be at least 0"),
                          (["eval", "xnli", "--model", "m", "batch_size=0"], "batch_size=0: must be at least 1"),
                          (["cache-teacher", "--corpus", "c", "shard_size=0"], "shard_size=0: must be at least 1"),
                          (["corpus", "prepare", "en-fr", "min_tokens=-2"], "min_tokens=-2: must be at least 0")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert r.output.strip().count("\n") == 0, r.output


def test_train_config_paper_and_ablate_config_demo_resolve(tmp_path):
    """`mmkd train --config paper` and `mmkd ablate --config demo` run the presets (here they stop at
    the missing cache, after the settings were resolved and checked)."""
    r = CliRunner().invoke(main, ["train", "--config", "paper", "--cache", str(tmp_path / "none"),
                                  "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "no teacher cache here" in r.output
    r = CliRunner().invoke(main, ["ablate", "--config", "demo", "--cache", str(tmp_path / "none"),
                                  "--out", str(tmp_path / "a"), "--pairs", "x.tsv"])
    assert r.exit_code == 2 and "no teacher cache here" in r.output


def test_no_command_shows_more_than_twelve_flags():
    """Flags are for paths and actions; settings are KEY=VALUE (their older options are hidden)."""
    def commands(group, prefix=()):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from commands(cmd, prefix + (name,))
            else:
                yield prefix + (name,), cmd

    counted = {" ".join(path): sum(1 for p in cmd.params if isinstance(p, click.Option) and not p.hidden)
               for path, cmd in commands(main)}
    assert len(counted) >= 19 and max(counted.values()) <= 12, {k: v for k, v in counted.items() if v > 12}


def test_messages_and_docs_name_a_setting_by_its_key_not_its_hidden_option():
    """A message, docstring or page says `max_length=512`, never `--max-length 512`: the one way to
    give a setting is KEY=VALUE. Only the declarations of the hidden options (`flag=...`,
    click.option, the ablation's eval aliases) spell them."""
    hidden = _hidden_setting_options()
    assert {"--max-length", "--teacher-max-length", "--grad-accum", "--test-split", "--head-out"} <= hidden
    pattern = re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, hidden), key=len, reverse=True)) + r")(?![\w-])")
    offenders = []
    for path in sorted((REPO / "mmkd").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        declared = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "flag":
                declared.add(id(node.value))
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option":
                declared.update(id(a) for a in node.args)
            elif isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_EVAL_ALIASES":
                declared.update(id(v) for v in node.value.values)
        for node in ast.walk(tree):       # an option spelled from a key at run time: f"--{key.replace('_', '-')}"
            if isinstance(node, ast.JoinedStr) and "cli/options.py" not in str(path):
                parts = node.values
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} an option made from a key"
                              for a, b in zip(parts, parts[1:]) if isinstance(a, ast.Constant)
                              and str(a.value).endswith("--") and isinstance(b, ast.FormattedValue)]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in declared:
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} {m.group(1)}"
                              for m in pattern.finditer(node.value)
                              if "hidden" not in node.value[max(0, m.start() - 200):m.start()]]
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if "older option" in line or "still works, hidden" in line or re.search(r"--rows|--phase|--seeds \d", line):
                continue            # the hidden options' own mention; benchmarks/real_student.py's arguments
            offenders += [f"{page.relative_to(REPO)}:{i} {m.group(1)}" for m in pattern.finditer(line)]
    assert not offenders, "\n".join(offenders)


def test_the_demos_small_size_is_a_settings_file():
    """`mmkd demo --small` reads presets/demo/small.json (sizes, and the training preset demo-small):
    what runs is in the file, and KEY=VALUE still goes on top."""
    from mmkd.demo import SMALL, DemoConfig

    listed = json.loads(SMALL.read_text())
    small = st.load(DemoConfig, str(SMALL))
    assert (small.train_pairs, small.heldout_pairs, small.xnli_test_examples, small.settings) == \
           (listed["train_pairs"], listed["heldout_pairs"], listed["xnli_test_examples"], "demo-small")
    assert small.train_pairs < DemoConfig().train_pairs and small.heldout_pairs < DemoConfig().heldout_pairs
    assert st.load(TrainConfig, small.settings).max_steps == 6
    given = st.load(DemoConfig, str(SMALL), st.assignments(DemoConfig, ["train_pairs=50"], "demo"))
    assert given.train_pairs == 50 and given.heldout_pairs == small.heldout_pairs
