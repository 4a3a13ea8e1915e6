"""Zero-shot evaluation (paper 4.2–4.5): XNLI, PAWS-X, XQuAD, translation retrieval, t-SNE.
One file per task; `metrics.py` holds the scoring functions; `runner.py` the seeds and reports."""
