"""The teacher cache: format (`format.py`), writer (`writer.py`), reader (`reader.py`), checks
(`verify.py`). Stage one and stage two meet only here."""

from mmkd.cache.reader import TeacherBatch, TeacherCache
from mmkd.cache.writer import CacheConfig, build_cache

__all__ = ["TeacherBatch", "TeacherCache", "CacheConfig", "build_cache"]
