"""The teacher cache: format (`format.py`), reader (`reader.py`), checks before use
(`integrity.py`), writer (`writer.py`, stage one), upgrade and verify.

Stage one and stage two meet only here, and stage two needs only the reader: importing this
package loads no writer, teacher or corpus code. `CacheConfig` and `build_cache` are loaded from
the writer when first asked for."""

from mmkd.cache.reader import TeacherBatch, TeacherCache

__all__ = ["TeacherBatch", "TeacherCache", "CacheConfig", "build_cache"]


def __getattr__(name: str):
    if name == "CacheConfig":
        from mmkd.cache.settings import CacheConfig   # lazy: stage two imports this package and loads no stage-one code
        return CacheConfig
    if name == "build_cache":
        from mmkd.cache.writer import build_cache     # lazy: the writer is stage one
        return build_cache
    raise AttributeError(f"module 'mmkd.cache' has no attribute {name!r}")
