"""Figure 2 of the paper: t-SNE of the [CLS] vectors of N sentences and their translations, one
colour per sentence, one marker per language; one panel per model, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmkd.eval.data import EvalDataError
from mmkd.eval.finetune import device
from mmkd.eval.retrieval import embed
from mmkd.hf import load, load_tokenizer
from mmkd.lines import split_lines

MARKERS = "os^vD*PXh<>p"


def read_multiway(files: dict[str, str], n: int, seed: int = 0, xnli_dir: str | None = None,
                  languages: list[str] | None = None) -> dict[str, list[str]]:
    """{lang: sentences}, row i of every language being translations of each other. Either
    `files` {lang: line-aligned file} or an XNLI folder (premises of dev-{lang}.tsv, 15-way
    parallel; the paper's choice)."""
    columns: dict[str, list[str]] = {}
    if xnli_dir:
        for lang in languages or ["en", "ar", "bg", "de", "es", "fr", "hi", "zh"]:
            path = Path(xnli_dir) / f"dev-{lang}.tsv"
            if not path.is_file():
                raise EvalDataError(f"{path}: no such file")
            columns[lang] = [line.split("\t")[0] for line in split_lines(path.read_text(encoding="utf-8"))]
        # XNLI repeats each premise for 3 hypotheses: keep the first row of each group.
        columns = {k: v[::3] for k, v in columns.items()}
    for lang, path in files.items():
        if not Path(path).is_file():
            raise EvalDataError(f"{path}: no such file")
        columns[lang] = split_lines(Path(path).read_text(encoding="utf-8"))
    if len(columns) < 2:
        raise EvalDataError("t-SNE needs at least two languages (--file LANG=PATH, or --xnli-dir)")
    sizes = {len(v) for v in columns.values()}
    if len(sizes) != 1:
        raise EvalDataError(f"the files are not line-aligned: line counts {sorted(sizes)}")
    rows = np.random.default_rng(seed).choice(sizes.pop(), size=n, replace=False)
    return {lang: [col[i] for i in rows] for lang, col in columns.items()}


def plot_tsne(models: list[str], sentences: dict[str, list[str]], out: str, seed: int = 0,
              labels: list[str] | None = None) -> str:
    # lazy: matplotlib and scikit-learn are optional (the demo extra)
    from transformers import AutoModel   # lazy: transformers, see mmkd/__init__.py
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE


    langs = list(sentences)
    n = len(sentences[langs[0]])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 5.5), squeeze=False)
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, n))
    for ax, name, label in zip(axes[0], models, labels or models):
        tok = load_tokenizer(name)
        model = load(AutoModel, name, "encoder").to(device()).eval()
        vecs = np.concatenate([embed(model, tok, sentences[lang])["cls"].numpy() for lang in langs])
        xy = TSNE(n_components=2, perplexity=min(30, len(vecs) - 1), random_state=seed, init="pca").fit_transform(vecs)
        for li, lang in enumerate(langs):
            pts = xy[li * n:(li + 1) * n]
            ax.scatter(pts[:, 0], pts[:, 1], c=colours, marker=MARKERS[li % len(MARKERS)], s=40,
                       edgecolors="black", linewidths=0.3, label=lang)
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(title="language (marker)", loc="best", fontsize=8)
    fig.suptitle(f"t-SNE of [CLS] vectors: {n} sentences x {len(langs)} languages (colour = sentence)")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
