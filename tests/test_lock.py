"""One holder per folder (mmkd/lock.py): dead holders free it, racers get it once, a user's file is never
taken for a lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from mmkd.cli import main

from helpers import fresh, one_line, train_args


def test_a_killed_holders_forked_children_delay_the_lock_but_do_not_refuse_it(tmp_path):
    """kill -9 of a run leaves its data-loader workers (forked, so holding the inherited flock) alive
    for a few seconds: a resume started at once waits for them instead of naming a process that is gone;
    a holder that is alive is refused at once."""
    import fsspec

    from mmkd.errors import MMKDError
    from mmkd.lock import Lock

    folder = tmp_path / "run"
    folder.mkdir()
    code = ("import os, sys, time, fsspec; from mmkd.lock import Lock; "
            f"Lock(fsspec.filesystem('file'), {str(folder)!r}, 'run', 'test').acquire(); "
            "child = os.fork()\n"
            "if child == 0:\n    time.sleep(2); os._exit(0)\n"       # the worker: holds the lock 2 s more
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(MMKDError, match=f"is being written by process {holder.pid}"):
        Lock(fsspec.filesystem("file"), str(folder), "run", "test").acquire()      # alive: refused at once
    holder.kill()
    holder.wait()
    started = time.monotonic()
    lock = Lock(fsspec.filesystem("file"), str(folder), "run", "test")
    lock.acquire()                                              # waits for the orphaned child, then holds it
    assert lock.held and 0.5 < time.monotonic() - started < 15
    lock.release()


def test_many_processes_racing_for_a_lock_left_by_a_dead_holder_give_it_to_one(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "x"}))   # a dead holder's
    code = ("import sys, time, fsspec; from mmkd.lock import Lock; from mmkd.errors import MMKDError\n"
            f"l = Lock(fsspec.filesystem('file'), {str(folder)!r}, 'c', 'race')\n"
            "start = float(sys.argv[1])\n"
            "while time.time() < start: pass\n"
            "try:\n    l.acquire(); print('held', flush=True); time.sleep(1.5); l.release()\n"
            "except MMKDError as e:\n    print('refused', flush=True)\n")
    for _ in range(3):
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True,
                                  stderr=subprocess.PIPE) for _ in range(12)]
        outs = [p.communicate(timeout=60) for p in procs]
        results = [o.strip() for o, _ in outs]
        assert all(not e for _, e in outs), [e for _, e in outs if e][:1]
        assert results.count("held") == 1 and results.count("refused") == 11, results


def test_an_empty_lock_file_names_no_phantom_process(tmp_path):
    import fsspec

    from mmkd.errors import MMKDError
    from mmkd.lock import Lock

    (tmp_path / "lock").write_text("")
    holder = Lock(fsspec.filesystem("file"), str(tmp_path), "c", "t")
    holder.acquire()
    (tmp_path / "lock").write_text("")                     # a holder whose record is empty
    with pytest.raises(MMKDError) as e:
        Lock(fsspec.filesystem("file"), str(tmp_path), "c", "t").acquire()
    assert "None" not in str(e.value) and "another process" in str(e.value)
    holder.release()


def test_a_users_file_named_lock_is_never_emptied(tmp_path, cache, tiny_student, data_dir, tiny_teacher):
    run = tmp_path / "run"
    run.mkdir()
    (run / "lock").write_text("my lock-picking notes")
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)), "is not an mmkd lock file")
    assert (run / "lock").read_text() == "my lock-picking notes" and os.listdir(run) == ["lock"]
    out = tmp_path / "caches"
    (out / "en-fr").mkdir(parents=True)
    (out / "en-fr" / "lock").write_text("mine")
    r = CliRunner().invoke(main, ["cache-teacher", "--corpus", "en-fr", "--teacher", tiny_teacher, "--out", str(out),
                                  "--data-dir", str(data_dir), "--quiet"])
    one_line(r, "is not an mmkd lock file")
    assert (out / "en-fr" / "lock").read_text() == "mine"


def test_a_lock_that_is_a_link_is_never_followed(tmp_path, cache, tiny_student, data_dir):
    from mmkd.errors import MMKDError
    from mmkd.lock import Lock
    from fsspec.implementations.local import LocalFileSystem

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "lock").symlink_to(victim)
    one_line(CliRunner().invoke(main, train_args(cache, tiny_student, run, data_dir)), "is a link", "remove the link")
    own = fresh(cache, tmp_path)
    (own / "en-fr" / "lock").unlink(missing_ok=True)
    (own / "en-fr" / "lock").symlink_to(victim)
    with pytest.raises(MMKDError, match="never locks through a link"):
        Lock(LocalFileSystem(), str(own / "en-fr"), str(own / "en-fr"), "mmkd cache-teacher").acquire()
    r = CliRunner().invoke(main, ["cache", "upgrade", str(own / "en-fr"), "--data-dir", str(data_dir)])
    one_line(r, "is a link")
    assert victim.read_text() == "precious"
