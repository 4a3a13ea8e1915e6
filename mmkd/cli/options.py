"""How a command takes settings (mmkd/settings.py declares them).

The one way: `KEY=VALUE` after the command's flags, on top of `--config` (a preset or a file), as
torchtune does: `mmkd train --cache c/ --config paper struca.alpha=2 max_steps=1000`. `mmkd ablate`
and `mmkd demo` address their training settings as `train.KEY=VALUE` (and ablate its evaluations'
as `eval.KEY=VALUE`). `mmkd settings COMMAND` lists every key with its type, range and default.

Flags are for paths and actions. Each setting also still has its generated option (`--its-name
VALUE`, hidden from `--help`), which older scripts use; KEY=VALUE wins over it.
"""

from __future__ import annotations

import textwrap

import click

from mmkd import settings as st

PREFIX = "s__"


class _ItemList(click.ParamType):
    name = "list"

    def __init__(self, item):
        self.item = item

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(self.item(part))
            except ValueError:
                self.fail(f"{part!r} is not a valid {self.item.__name__}", param, ctx)
        return out


def _click_type(field: st.Field):
    base, _ = st._base(field.type)
    choices = st.allowed(field)
    if base in (list, tuple):
        return _ItemList(st.item_type(field.type))
    if choices:
        return click.Choice([str(c) for c in choices])
    return {int: click.INT, float: click.FLOAT, str: click.STRING}.get(base, click.STRING)


def option_flag(field: st.Field, prefix: str | None = None, aliases: dict | None = None) -> str:
    """The option of a setting: `--name`, or `--PREFIX-name` (unless its flag already starts so), or an alias."""
    if aliases and field.key in aliases:
        return aliases[field.key]
    flag = field.flag
    if prefix and not flag.startswith(f"--{prefix}-"):
        flag = f"--{prefix}-{flag[2:]}"
    return flag


def settings_options(cls, exclude: tuple[str, ...] = (), hidden: bool = True, prefix: str | None = None,
                     aliases: dict | None = None, param: str = PREFIX):
    """A decorator adding one option per command-line setting of `cls` (not those in `exclude`).
    `prefix` puts `--PREFIX-` before each option (a second settings class on one command);
    `param` names the parameters (`s__xwcl__temperature`), for `overrides`."""
    if prefix and param == PREFIX:
        param = prefix[0] + "__"

    def decorate(fn):
        for field in reversed(st.fields(cls)):
            if not field.meta.get("cli", True) or field.key in exclude:
                continue
            name = param + "__".join(field.path)
            flag = option_flag(field, prefix, aliases)
            base, _ = st._base(field.type)
            help_ = field.meta.get("help", "")
            if base is bool:
                fn = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, hidden=hidden, help=help_)(fn)
            elif base in (list, tuple):
                fn = click.option(flag, name, type=_click_type(field), multiple=True, hidden=hidden,
                                  help=help_)(fn)
            else:
                fn = click.option(flag, name, type=_click_type(field), default=None, hidden=hidden,
                                  help=help_)(fn)
        return fn
    return decorate


def assignments_argument(fn):
    """The command's `[KEY=VALUE]...` settings (its `assignments` parameter)."""
    return click.argument("assignments", nargs=-1, metavar="[KEY=VALUE]...")(fn)


def grouped(items: tuple[str, ...], prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    """KEY=VALUE items by the prefix of their key (`train.lr=1e-4` -> {"train": ["lr=1e-4"]}); an item
    with none of `prefixes` goes under ""."""
    out: dict[str, list[str]] = {p: [] for p in ("", *prefixes)}
    for item in items:
        head, dot, rest = item.partition(".")
        if dot and head in prefixes:
            out[head].append(rest)
        else:
            out[""].append(item)
    return out


def overrides(kwargs: dict, param: str = PREFIX) -> dict[tuple[str, ...], object]:
    """The settings given on the command line (removed from `kwargs`), by path."""
    out = {}
    for key in [k for k in kwargs if k.startswith(param)]:
        value = kwargs.pop(key)
        if value is None or value == ():
            continue
        if isinstance(value, tuple):       # a repeated list option: the lists joined
            value = [v for part in value for v in part]
        out[tuple(key[len(param):].split("__"))] = value
    return out


def settings_epilog(cls, exclude: tuple[str, ...] = (), command: str = "train") -> str:
    names = ", ".join(f.key for f in st.fields(cls) if f.meta.get("cli", True) and f.key not in exclude)
    presets = ", ".join(st.preset_names())
    return "\b\n" + "\n".join(
        [f"Settings: KEY=VALUE after the flags (over any --config, else the default), e.g. {_example(cls)}. Keys:"]
        + textwrap.wrap(names + ".", 96, break_on_hyphens=False)
        + [f"`mmkd settings {command}` explains each (range, default); `mmkd settings {command} --config NAME`",
           f"shows a preset ({presets}) or a settings file."])


def _example(cls) -> str:
    """Two settings as KEY=VALUE with their defaults (a nested one when there is one)."""
    shown = [f for f in st.fields(cls) if f.meta.get("cli", True) and f.default is not None
             and not isinstance(f.default, (list, tuple))]
    picked = shown[:1] + [f for f in shown if "." in f.key][:1]
    return " ".join(f"{f.key}={str(f.default).lower() if isinstance(f.default, bool) else f.default}" for f in picked)
