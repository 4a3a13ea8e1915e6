"""Issue #12, section 3: every option's default is its dataclass field's default, for every
command that builds a config (train and demo are checked in their own test files)."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from mmkd.cli import main


def _default(param):
    value = param.default
    if param.multiple:
        return list(value) if isinstance(value, (list, tuple)) else []
    if getattr(param, "is_flag", False) and not isinstance(value, bool):
        return False
    return value if isinstance(value, (str, int, float, bool, type(None))) else None


def _field_default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def _command(path):
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _cache_config():
    from mmkd.cache.writer import CacheConfig
    return CacheConfig


def _corpus_config():
    from mmkd.corpus import CorpusConfig
    return CorpusConfig


def _eval_config():
    from mmkd.eval.finetune import EvalConfig
    return EvalConfig


# (command, its config, CLI name -> field name, how a CLI value is written in the config, fields to skip)
CASES = [
    (("cache-teacher",), _cache_config, {}, {"compression": lambda v: None if v == "none" else v},
     {"data_dir", "corpora"}),
    (("corpus", "prepare"), _corpus_config, {"zip_": "zip"}, {"moses": lambda v: v or None},
     {"data_dir", "opus_base_url", "pair", "name"}),
    (("eval", "xnli"), _eval_config, {}, {"seeds": lambda v: [int(x) for x in v.split(",")],
                                         "languages": lambda v: v.split(",") if v else []}, {"task", "model", "out"}),
]


@pytest.mark.parametrize("path,config,renames,convert,skip", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_cli_defaults_are_the_config_defaults(path, config, renames, convert, skip):
    params = {renames.get(p.name, p.name): p for p in _command(path).params}
    checked = 0
    for f in fields(config()):
        if f.name in skip or f.name not in params:
            continue
        cli = _default(params[f.name])
        cli = convert.get(f.name, lambda v: v)(cli)
        assert cli == _field_default(f), f"{' '.join(path)} --{f.name.replace('_', '-')}"
        checked += 1
    assert checked >= 5
