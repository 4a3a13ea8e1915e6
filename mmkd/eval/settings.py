"""The settings of a zero-shot evaluation (`mmkd eval xnli|pawsx|xquad`, the sweep's and the demo's)."""

from __future__ import annotations

from dataclasses import dataclass

from mmkd.settings import SEED_MAX, setting


@dataclass
class EvalConfig:
    task: str = setting("xnli", "xnli, pawsx, xquad or retrieval.", choices=("xnli", "pawsx", "xquad", "retrieval"),
                        cli=False)
    model: str = setting("", "Encoder to evaluate: hub id or folder.", cli=False)
    out: str | None = setting(None, "Where results.json/results.md go.", cli=False)
    pairs: list[str] = setting(help="Retrieval: the parallel sets, [NAME=]EN_FILE,X_FILE or [NAME=]PAIRS.tsv.",
                               factory=list, cli=False)
    data_dir: str | None = setting(None, "Local evaluation data in XTREME's layout (DIR/xnli, DIR/pawsx, DIR/xquad, "
                                         "DIR/squad); default: the hub's datasets.", flag="--eval-data-dir")
    train_file: str | None = setting(None, "English training data (XTREME TSV / SQuAD JSON); default: the hub's "
                                           "English train.")
    hub_revision: str = setting("main", "Without data_dir: the revision (branch, tag or commit) of the task's hub "
                                        "dataset (facebook/xnli, google-research-datasets/paws-x, google/xquad). It is "
                                        "resolved to one commit before anything is read; results.json records both.")
    train_hub_revision: str = setting("main", "XQuAD without train_file: the revision of rajpurkar/squad, the English "
                                              "training questions (resolved and recorded the same way).")
    dev_file: str | None = setting(None, "English dev for checkpoint selection (default: DIR/task/dev-en.tsv; for "
                                         "XQuAD the last 10% of the training questions).")
    languages: list[str] = setting(help="Target languages (comma-separated); default: the task's.", factory=list)
    seeds: list[int] = setting(help="Fine-tuning seeds (comma-separated); reports mean ± std.",
                               factory=lambda: [1], min=0, max=SEED_MAX)
    epochs: float | None = setting(None, "Fine-tuning epochs. Default: 5 (XNLI, PAWS-X), 3 (XQuAD).", above=0)
    lr: float | None = setting(None, "Fine-tuning learning rate. Default: 2e-5 (XNLI, PAWS-X), 3e-5 (XQuAD).",
                               above=0, max=1.0)
    seed_processes: int = setting(0, "Fine-tuning seeds run at once, each in its own process on its own device: 0 = one "
                                     "per visible GPU when there are several, else one after another. Changes no "
                                     "result, only the time.", min=0)
    batch_size: int = setting(32, "Fine-tuning batch size.", min=1)
    max_length: int | None = setting(None, "Default: 128 (XNLI, PAWS-X), 384 (XQuAD).", min=8)
    weight_decay: float | None = setting(None, "Default: 0 (XNLI, PAWS-X), 1e-4 (XQuAD).", min=0, max=1.0)
    warmup_ratio: float | None = setting(None, "Default: 0 (XNLI, PAWS-X), 0.1 (XQuAD).", min=0, max=1.0)
    max_train_examples: int | None = setting(None, "Cap the training set (smoke runs).", min=1)
    max_eval_examples: int | None = setting(None, "Cap every dev/test set (smoke runs).", min=1)
    test_offset: int = setting(0, "XNLI, PAWS-X: skip the first N test examples of each language (with "
                                  "--max-eval-examples: report on rows kept apart from those a choice was made on).",
                               min=0)
    test_split: str = setting("test", "XNLI, PAWS-X: score the target languages' test rows, or their dev rows (to "
                                      "choose settings on data that is not reported).", choices=("test", "dev"))
    oracle: bool = setting(False, "Also report target-dev (oracle) checkpoint selection.")
    doc_stride: int = setting(128, "XQuAD: overlap of the strided context windows, in tokens.", min=1)
    max_question_length: int = setting(64, "XQuAD: questions longer than this many tokens keep their first ones "
                                           "(BERT's SQuAD recipe); always fewer than max_length minus "
                                           "doc_stride.", min=1)
    max_answer_length: int = setting(30, "XQuAD: longest answer span, in tokens.", min=1)
    qa_scoring: str = setting("squad", "XQuAD: how answers are scored. squad = the official SQuAD v1.1 rules, as XTREME "
                                       "scores XQuAD (the paper's Table 4); mlqa = MLQA's script (Unicode punctuation, "
                                       "each language's articles, zh by character; en es hi vi de ar zh only). Named in "
                                       "results.json.", choices=("squad", "mlqa"))
    n_best: int = setting(20, "XQuAD: start and end candidates considered.", min=1)
    mixed_precision: str = setting("auto", "Precision of fine-tuning and prediction, by training's rule: auto = "
                                           "ACCELERATE_MIXED_PRECISION if set, else bf16 on GPUs that have it, fp16 "
                                           "(loss-scaled) on others, fp32 on CPU. A run's own evaluations (demo, "
                                           "ablate) use the run's setting.", choices=("auto", "no", "bf16", "fp16"))
    trust_remote_code: bool = setting(False, "Allow custom model code (off by default).", cli=False)
