"""The data of one training step on one process: which pairs, their text, their teacher features,
and the student inputs built from them. A `torch.utils.data.Dataset` indexed by step, so data-loader
workers prepare later steps while the model trains (the order is a function of (seed, step), so a
resumed run needs only the step count).

One pair's way from the schedule to a loss, every hop named:
  schedule.batch(step)        -> the step's global batch of PairKeys (language-balanced)
  StepData.plan(step)         -> this process's micro-batches (`Part`s): keys assigned by position,
                                 or by length (the global batch's text read to measure it)
  StepData.build(part)        -> features.read: the pairs' text and teacher features, one pass over
                                 their shards; student inputs built (batching.build_student_batch;
                                 objectives/inputs.py)
  train.train_step            -> model forward (model.py) -> each objective's forward and loss
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch

from mmkd import objectives as objs
from mmkd.errors import CacheError, MMKDError
from mmkd.batching import PairKey, Part, StudentBatch, build_student_batch
from mmkd.features import TeacherFeatures
from mmkd.objectives.inputs import MaskingConfig, random_token_ids
from mmkd.schedule import BalancedSchedule, split_by_length, split_for


class StepData(torch.utils.data.Dataset):
    """Item `step` = this process's micro-batches of that step. With a cache, workers read the
    teacher features and build the student inputs; with an online teacher they only plan, and the
    main process builds (the teacher runs on the training device)."""

    def __init__(self, features: TeacherFeatures, schedule: BalancedSchedule, rank: int, world: int, cfg,
                 tokenizer, segments: bool = True):
        self.features, self.schedule, self.rank, self.world = features, schedule, rank, world
        self.cfg, self.tokenizer = cfg, tokenizer
        self.masking = MaskingConfig(cfg.max_length, cfg.mlm_probability, cfg.seed, segments)
        self.random_ids = random_token_ids(tokenizer)
        self.specs = objs.inputs(objs.chosen(cfg.without))

    def __len__(self) -> int:
        return 1 << 62

    def plan(self, step: int) -> list[Part]:
        """This process's micro-batches of `step`. By position (`assign=stride`, or one process
        without accumulation) the pair inputs and the sentence input hold the same pairs; by length,
        each holds the micro-batch's members of its length range, so each forward pads little. Every
        process first reads the whole global batch's text to measure it (all must agree on the assignment)."""
        batch = [PairKey(*k) for k in self.schedule.batch(step)]
        if self.cfg.assign == "stride" or self.world * self.cfg.grad_accum == 1:
            return [Part(keys, keys) for keys in split_for(batch, self.rank, self.world, self.cfg.grad_accum)]
        _, english, targets = self.features.text(batch)
        pair_len, sent_len = self.lengths(english, targets)
        by_pair = split_by_length(batch, pair_len, self.rank, self.world, self.cfg.grad_accum)
        by_sent = split_by_length(batch, sent_len, self.rank, self.world, self.cfg.grad_accum)
        return [Part(p, s) for p, s in zip(by_pair, by_sent)]

    def lengths(self, english, targets) -> tuple[list[int], list[int]]:
        """Sub-tokens of each pair's `s t` and of its `t` (no special tokens): what the pair inputs
        and the sentence input pad to."""
        source = [len(ids) for ids in self.tokenizer(english, add_special_tokens=False)["input_ids"]]
        target = [len(ids) for ids in self.tokenizer(targets, add_special_tokens=False)["input_ids"]]
        return [a + b for a, b in zip(source, target)], target

    def build(self, part: Part) -> StudentBatch:
        """Read the part's pairs (text and teacher features in one pass) and build its student inputs."""
        pairs = self.features.read(part.pair_keys)
        sentences = pairs if part.sent_keys == part.pair_keys else self.features.read(part.sent_keys)
        read = Part(part.pair_keys, part.sent_keys, pairs, sentences)
        return build_student_batch(self.tokenizer, read, self.specs, self.masking, self.random_ids)

    def __getitem__(self, step: int):
        try:
            parts = self.plan(step)
            if self.features.runs_in_workers:
                return [self.build(part) for part in parts]
            return parts
        except MMKDError as e:              # raised again by the main process: one line, not a worker traceback
            return Failure(type(e), str(e))
        except (OSError, ValueError, IndexError, KeyError, pa.ArrowException) as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            return Failure(CacheError, f"step {step + 1}: reading the pairs' text or teacher features failed "
                                       f"({type(e).__name__}: {first}); `mmkd cache verify` the caches")


@dataclass
class Failure:
    """An error met while preparing a step, possibly in a data-loader worker."""
    kind: type
    message: str


def raise_failure(item) -> None:
    if isinstance(item, Failure):
        raise item.kind(item.message)
