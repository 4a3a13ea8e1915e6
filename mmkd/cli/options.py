"""Command-line options generated from the settings dataclasses (mmkd/settings.py).

Every leaf setting of a dataclass becomes `--its-name VALUE` (a boolean `--name/--no-name`; a list
repeats or takes commas: `--seeds 1,2,3`), with default None: what is not given comes from
`--config`, else the dataclass. They are hidden from `--help`, which lists their names and points to
`mmkd settings`, where each is explained with its type, range and default.
"""

from __future__ import annotations

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
    import textwrap

    names = ", ".join(f.flag[2:] for f in st.fields(cls) if f.meta.get("cli", True) and f.key not in exclude)
    presets = ", ".join(st.preset_names())
    return "\b\n" + "\n".join(
        ["Settings: each is an option --NAME VALUE (over --config, else its default):"]
        + textwrap.wrap(names + ".", 96, break_on_hyphens=False)
        + [f"`mmkd settings {command}` explains each (range, default); `mmkd settings {command} --config NAME`",
           f"shows a preset ({presets}) or a settings file."])
