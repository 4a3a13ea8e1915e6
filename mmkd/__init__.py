"""mmkd — multi-level multilingual knowledge distillation with a precomputed teacher cache.

The Python API (docs/api.md):

    from mmkd import CacheConfig, build_cache, TeacherCache, TrainConfig, train, EvalConfig, evaluate, retrieval

Each name is imported from its module when first used: `import mmkd` alone loads no torch (about
two seconds of start-up), so `from mmkd import __version__` costs nothing in the modules that read it
and a script that needs one name pays only for that name's module.

Imports sit at the top of each module, with few exceptions, each marked `# lazy:` on its line or
above it. transformers and accelerate (about 0.7 s and 0.3 s more after torch) are imported inside
the functions that use them everywhere but the trainer, and the CLI imports the trainer inside the
commands that train: `import mmkd.cli` takes 1.6 s so, 3.0 s without (both measured on the 2-core
CI machine), and the cache reader and data-loader workers start without them.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "CacheConfig": ("mmkd.cache.settings", "CacheConfig"),
    "build_cache": ("mmkd.cache.writer", "build_cache"),
    "TeacherCache": ("mmkd.cache.reader", "TeacherCache"),
    "CorpusConfig": ("mmkd.corpus", "CorpusConfig"),
    "prepare_corpus": ("mmkd.corpus", "prepare_corpus"),
    "TrainConfig": ("mmkd.config", "TrainConfig"),
    "HeadSettings": ("mmkd.objectives.sentence", "HeadSettings"),
    "train": ("mmkd.trainer", "train"),
    "EvalConfig": ("mmkd.eval.settings", "EvalConfig"),
    "evaluate": ("mmkd.eval.api", "evaluate"),
    "retrieval": ("mmkd.eval.api", "retrieval"),
    "load_settings": ("mmkd.settings", "load"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmkd' has no attribute {name!r}")
