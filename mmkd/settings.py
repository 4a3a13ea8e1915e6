"""Typed settings: every default is written once, in a dataclass field, with its meaning and range.

A settings class declares each field with `setting(default, help, ...)`. From those declarations
alone mmkd derives:
- the hidden command-line options older scripts use (`--field-name VALUE`, `--flag/--no-flag` for
  booleans; nested settings such as `xwcl.temperature` are `--xwcl-temperature`; `KEY=VALUE` is the
  form shown), whose click defaults are all None: a value not given on the command line comes from
  `--config` (a preset or a file), else the dataclass;
- validation with the range, naming the key (`lr=nan: must be a finite number`);
- reading a settings file (a preset in `mmkd/presets/`, any JSON mapping, or a run's `config.json`)
  with every key and type checked, naming the file and key;
- the table `mmkd settings` prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from mmkd.errors import MMKDError

PRESETS = Path(__file__).parent / "presets"
# The largest seed numpy (RandomState) and torch both take: a larger one would be an overflow traceback.
SEED_MAX = 2**32 - 1


class SettingsError(MMKDError):
    pass


def setting(default=MISSING, help: str = "", *, factory=None, min=None, max=None, above=None, choices=None,
            flag: str | None = None, cli: bool = True, finite: bool = True):
    """A settings field. `min`/`max` are inclusive bounds, `above` an exclusive lower bound,
    `choices` the allowed values; `flag` names the option when it is not `--field-name`; `cli=False`
    keeps the field off the command line (set by the command itself or by a file)."""
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": choices,
            "flag": flag, "cli": cli, "finite": finite}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]          # ("xwcl", "temperature")
    type: Any                      # the annotation, resolved
    default: Any
    meta: dict

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or "--" + "-".join(self.path).replace("_", "-")

    @property
    def legacy_key(self) -> str:
        """The flat key older run configs used (the flag's name): `xwcl_temperature`, `alpha`."""
        return self.flag[2:].replace("-", "_")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is_settings(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def fields(cls, prefix: tuple[str, ...] = ()) -> list[Field]:
    """Every leaf setting of `cls`, nested settings flattened, in declaration order."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_settings(tp):
            out += fields(tp, prefix + (f.name,))
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        out.append(Field(prefix + (f.name,), tp, default, dict(f.metadata)))
    return out


def _base(tp):
    """(base type, optional) of an annotation: `int | None` -> (int, True), `list[str]` -> (list, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base(args[0])[0], True
    return (origin or tp), False


def item_type(tp):
    """The item type of a list setting (`list[int]` -> int; `tuple[str, str] | None` -> str)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    args = typing.get_args(tp)
    return args[0] if args else str


def check_value(field: Field, value, where: str = "") -> Any:
    """`value` as the field's type, within its range; else a SettingsError naming `where` (a file) and the key."""
    name = f"{where}: {field.key}" if where else field.key
    base, optional = _base(field.type)
    if value is None:
        if optional:
            return None
        raise SettingsError(f"{name}: a value is required (got null)")
    m = field.meta
    if base is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{name}={value!r}: must be true or false")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and not where:
                value = int(value)
            else:
                raise SettingsError(f"{name}={value!r}: must be a whole number")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{name}={value!r}: must be a number")
        value = float(value)
        if m.get("finite", True) and not math.isfinite(value):
            raise SettingsError(f"{name}={value}: must be a finite number")
    elif base is str:
        if not isinstance(value, str):
            raise SettingsError(f"{name}={value!r}: must be a string")
    elif base in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise SettingsError(f"{name}={value!r}: must be a list")
        sub = dataclasses.replace(field, type=item_type(field.type))
        return [check_value(sub, v, where) for v in value]
    choices = allowed(field)
    if choices and value not in choices:
        raise SettingsError(f"{name}={value!r}: choose {', '.join(map(str, choices))}")
    if base in (int, float):
        lo, hi, above = m.get("min"), m.get("max"), m.get("above")
        if above is not None and not value > above:
            raise SettingsError(f"{name}={value}: must be greater than {above}")
        if lo is not None and value < lo:
            raise SettingsError(f"{name}={value}: must be at least {lo}")
        if hi is not None and value > hi:
            raise SettingsError(f"{name}={value}: must be at most {hi}")
    return value


def allowed(field: Field) -> tuple | None:
    """The values a setting may take (a callable is asked now: the objectives registered, say)."""
    choices = field.meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


def validate(obj) -> None:
    """Every field of a settings object within its type and range (the error names the option)."""
    for f in fields(type(obj)):
        check_value(f, get(obj, f.path))


def get(obj, path: tuple[str, ...]):
    for p in path:
        obj = getattr(obj, p)
    return obj


def dotted(d: dict, prefix: str = "") -> dict:
    """A nested mapping flattened to dotted keys: {"xwcl": {"temperature": 1}} -> {"xwcl.temperature": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def flat(obj) -> dict[str, Any]:
    """{"xwcl.temperature": 1.0, ...}: every leaf by its dotted key."""
    return {f.key: get(obj, f.path) for f in fields(type(obj))}


def replace(obj, values: dict[tuple[str, ...], Any]):
    """A copy of `obj` with the leaves at the given paths replaced (nested settings copied)."""
    grouped: dict[str, dict] = {}
    direct = {}
    for path, value in values.items():
        if len(path) == 1:
            direct[path[0]] = value
        else:
            grouped.setdefault(path[0], {})[path[1:]] = value
    for name, sub in grouped.items():
        direct[name] = replace(getattr(obj, name), sub)
    return dataclasses.replace(obj, **direct)


def from_mapping(cls, mapping: dict, where: str, base=None):
    """`base` (default: the dataclass defaults) with the settings in `mapping` on top. Nested or flat
    keys (`{"xwcl": {"temperature": 0.1}}`, `"xwcl.temperature"`, or the older flat `xwcl_temperature`)
    are accepted; unknown keys and wrong types are errors naming `where` and the key."""
    if not isinstance(mapping, dict):
        raise SettingsError(f"{where}: a settings file holds a JSON object of settings, not a {type(mapping).__name__}")
    by_key = {f.key: f for f in fields(cls)}
    by_key.update({f.legacy_key: f for f in fields(cls) if f.legacy_key not in by_key})
    values = {}

    def walk(d: dict, prefix: str):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key not in by_key:
                walk(v, key + ".")
                continue
            f = by_key.get(key)
            if f is None:
                raise SettingsError(f"{where}: unknown setting {key!r} (see `mmkd settings`)")
            values[f.path] = check_value(f, v, where)

    walk(mapping, "")
    return replace(base if base is not None else cls(), values)


_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("null", "none")


def parse_text(field: Field, text: str, where: str):
    """A setting's value from its text on the command line (`KEY=VALUE`), by the setting's type:
    true/false, a number, null for an optional one, a comma-separated list. The range is checked
    by `check_value` after."""
    base, optional = _base(field.type)
    t = text.strip()
    if optional and t.lower() in _NONE:
        return None
    if base is bool:
        if t.lower() in _TRUE:
            return True
        if t.lower() in _FALSE:
            return False
        raise SettingsError(f"{where}: {text!r} is not true or false")
    if base in (list, tuple):
        sub = dataclasses.replace(field, type=item_type(field.type))
        return [parse_text(sub, part, where) for part in t.split(",") if part.strip()]
    if base in (int, float):
        try:
            return int(t) if base is int else float(t)
        except ValueError:
            kind = "a whole number" if base is int else "a number"
            raise SettingsError(f"{where}: {text!r} is not {kind}") from None
    return text


def assignments(cls, items: list[str], command: str) -> dict[tuple[str, ...], Any]:
    """`KEY=VALUE` settings (`struca.alpha=2`, `max_steps=10`; a key may also be written as its option
    without the dashes, `max-steps=10`), by path, each checked against its type and range; one line
    naming the item at fault otherwise."""
    by_key = {f.key: f for f in fields(cls) if f.meta.get("cli", True)}
    for f in list(by_key.values()):
        for alias in (f.legacy_key, f.flag[2:], f.key.replace("_", "-")):
            by_key.setdefault(alias, f)
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise SettingsError(f"{item!r}: a setting is KEY=VALUE (e.g. struca.alpha=2); `mmkd settings {command}` "
                                "lists the keys")
        f = by_key.get(key.strip())
        if f is None:
            raise SettingsError(f"{key!r}: no such setting of mmkd {command} (`mmkd settings {command}` lists them)")
        out[f.path] = check_value(f, parse_text(f, text, f"{f.key}={text}"))
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def settings_chain(name_or_path: str) -> list[tuple[dict, str]]:
    """The settings files `name_or_path` stands for, the one it extends first: a file whose
    `"_extends"` names a preset (or file) changes only what it lists on top of that one."""
    chain, seen, name = [], [], name_or_path
    while name is not None:
        mapping, where, parent = _read(name)
        if where in seen:
            raise SettingsError(f"{where}: \"_extends\" leads back to itself ({' -> '.join(seen + [where])})")
        seen.append(where)
        chain.insert(0, (mapping, where))
        if parent is not None and not isinstance(parent, str):
            raise SettingsError(f"{where}: \"_extends\" is {parent!r}, not a preset name or file")
        name = parent
    return chain


def _read(name_or_path: str) -> tuple[dict, str, Any]:
    """(mapping, where, what it extends) of a preset name or a JSON file (a run's config.json: its "config")."""
    path = Path(name_or_path)
    if not path.is_file():
        preset = PRESETS / f"{name_or_path}.json"
        if not preset.is_file():
            raise SettingsError(f"--config {name_or_path!r}: neither a file nor a preset "
                                f"({', '.join(preset_names())})")
        path = preset
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SettingsError(f"{path}: not a readable settings file ({str(e).splitlines()[0][:160]})") from None
    except RecursionError:       # a file nested thousands of levels deep: no settings file is
        raise SettingsError(f"{path}: not a settings file (nested too deeply to read)") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "mmkd_version" in data:
        data = data["config"]     # a run folder's config.json
    parent = None
    if isinstance(data, dict):
        parent = data.get("_extends")
        data = {k: v for k, v in data.items() if not k.startswith("_")}    # "_about" and other notes
    return data, str(path), parent


def load(cls, config: str | None, overrides: dict[tuple[str, ...], Any] | None = None, base=None):
    """Defaults, then the preset or file `config`, then `overrides` (from the command line);
    validated."""
    obj = base if base is not None else cls()
    if config:
        for mapping, where in settings_chain(config):
            obj = from_mapping(cls, mapping, where, obj)
    if overrides:
        obj = replace(obj, overrides)
    validate(obj)
    return obj


def describe(cls, obj=None) -> list[tuple[str, str, str, str]]:
    """(key, value, kind, help) of every command-line setting, for `mmkd settings`."""
    obj = obj if obj is not None else cls()
    rows = []
    for f in fields(cls):
        if not f.meta.get("cli", True):
            continue
        base, optional = _base(f.type)
        m = f.meta
        kind = {bool: "flag", int: "integer", float: "number", str: "text", list: "list"}.get(base, str(base))
        if allowed(f):
            kind = "|".join(map(str, allowed(f)))
        bounds = [f"> {m['above']}" if m.get("above") is not None else "",
                  f">= {m['min']}" if m.get("min") is not None else "", f"<= {m['max']}" if m.get("max") is not None else ""]
        kind += " " + " ".join(b for b in bounds if b) if any(bounds) else ""
        value = get(obj, f.path)
        rows.append((f.key, json.dumps(value) if not isinstance(value, str) else value, kind.strip(),
                     m.get("help", "")))
    return rows
