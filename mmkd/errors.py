"""Errors a user can act on. Each message names the file (and line) or the value at fault."""


class MMKDError(Exception):
    """Base class: the CLI prints these without a traceback and exits with status 2."""


class CorpusError(MMKDError):
    pass


class CacheError(MMKDError):
    pass


class TrainingError(MMKDError):
    pass
