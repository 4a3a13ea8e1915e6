"""The Python API: `import mmkd` stays light, and docs/api.md's first example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_mmkd_loads_no_torch_and_every_api_name_resolves():
    code = ("import sys, mmkd; assert 'torch' not in sys.modules, 'torch'; "
            "names = [n for n in mmkd.__all__ if n != '__version__']; "
            "assert all(callable(getattr(mmkd, n)) for n in names), names; print(len(names))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout) >= 10


def test_the_documented_example_caches_trains_and_evaluates(tmp_path):
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    r = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^\d+ pairs cached$", r.stdout, re.M), r.stdout
    scores = re.search(r"mean-pooled retrieval (\d+\.\d) -> (\d+\.\d)$", r.stdout, re.M)
    assert scores and all(0 <= float(s) <= 100 for s in scores.groups()), r.stdout
    assert (tmp_path / "api-example" / "run" / "student" / "model.safetensors").is_file()
    assert (tmp_path / "api-example" / "retrieval" / "results.json").is_file()
