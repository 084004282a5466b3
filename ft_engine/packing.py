"""Padding-free batches: the rows of a batch laid end to end, so no compute goes to padding.

A batch is still `batch_size` rows (the sampler, the epochs, the steps and the learning-rate
schedule are exactly those of padded batches), but instead of padding every row to the
longest one, the rows are packed best-fit-decreasing into *lanes* no longer than the batch's
longest row:

    rows  500 120 100 80 60 40 30 20          padded:  8 × 500 = 4000 token slots
    lanes [500] [120 100 80 60 40 30 20]      packed:  2 × 500 = 1000 slots for 950 tokens

`position_ids` restart at 0 at each row. transformers builds a block-diagonal causal mask
from them when the model gets no attention_mask and no cache (masking_utils.
find_packed_sequence_indices), so attention never crosses rows. With the cache on, it does
not: the model must run with use_cache=False (training.py does).

Why lanes and not one long row: on a CPU, and with sdpa on a GPU, attention has no
variable-length kernel, so one flattened row of 8 × 500 tokens would pay (4000)² attention
and then mask most of it away. A lane is never longer than the batch's longest row, so
attention costs at most what that row costs alone. With flash-attention 2 (variable-length
kernel) one lane holding the whole batch is best: `single_lane=True`.

Passes: a batch's lanes need not go through the model together. `split_passes` cuts them into
passes of at most a token budget (whole lanes; one lane always fits) and the trainer sums
their gradients (lean_trainer.LeanTrainer.training_step), which are the batch's: each pass's
summed loss is divided by the trained tokens of the whole batch. Only one pass's activations
exist at a time, so the peak follows the budget, not the batch (CPU_PASS_TOKENS says what that
saves on a CPU, and at what cost).

Labels: `labels` keep the model's convention (the model shifts them), with the first token of
every row set to -100 so no row learns to predict the next row's first token. `shift_labels`
are the same targets already shifted (token i is trained to predict shift_labels[i]); the
engine's chunked loss reads those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .render import IGNORE_INDEX

# A CPU pass holds at most this many token slots (or one lane, if that is longer). The LoRA
# workload of bench/vs_trl.py (bundled model, batch 8, max length 512, 80 rows of 44-692
# tokens), 2026-12-02 on the 2-core CPU: the whole batch in one pass peaked at 3,988-4,077 MiB
# in 44.6-49.0 s; passes of 512 at 1,998 MiB (with PASS_WIDTH_QUANTUM) in 42.8-48.7 s; of
# 1,024 at 2,832 MiB in 57.9 s; of 128 (one lane each) at 2,486 MiB in 58.2 s (smaller passes
# save no memory once a pass is one lane, and pay per-pass overhead). Run-to-run noise on this
# machine is about ±10% in time: passes of 512 are as fast as whole batches, at half the memory.
CPU_PASS_TOKENS = 512
# A pass is padded to a width that is a multiple of this. Every new matrix shape costs memory
# that is never given back (oneDNN's kernels and buffers for that shape, and the allocator's
# fragments): lanes of every width from 44 to 512 grew a LoRA step loop on the bundled model
# from 1,708 to 2,932 MiB in 80 passes, while widths rounded to 64 stayed at 1,620-1,750 MiB
# (HF_HUB_OFFLINE=1 .venv/bin/python bench/pass_shapes.py, 2026-12-02). On the vs_trl workload, passes of 512:
# 2,373 MiB unrounded, 2,118 at 16, 2,012 at 32, 1,998 at 64, with no measurable slowdown (the
# padding is at most 63 slots per lane, attended by nothing and trained on by nothing).
PASS_WIDTH_QUANTUM = 64
# Short passes are padded by less: a width is rounded to a multiple of a quarter of the power of
# two below it (at least 16, at most PASS_WIDTH_QUANTUM): 80 stays 80, 130 becomes 160, 300 becomes
# 320. Rounding short rows to 64 cost the Quick demo (rows of 47-119 tokens, batch 4: widths of
# ~80 padded to 128, 60% more slots) 82 s instead of 69; with these widths it took 59 s
# (bench/studio_timings.py --methods lora, 2026-12-02). Four widths per octave still bound the
# number of shapes: the vs_trl LoRA workload peaked at 2,011-2,017 MiB against 1,979 with
# multiples of 64, in 51-63 s against 70 (bench/vs_trl.py --method lora --only ours, same hour).
PASS_WIDTH_STEPS_PER_OCTAVE = 4
PASS_WIDTH_MIN_STEP = 16


def pass_budget(tokens_per_pass: int, device: str, step_in_backward: bool) -> int | None:
    """Token slots per pass for RunConfig.tokens_per_pass on `device` ("cpu"/"cuda"); None:
    the whole batch in one pass. An optimizer that steps inside backward (adamw_lean) needs
    the whole batch's gradient in one backward, so it never splits."""
    if step_in_backward:
        return None
    if tokens_per_pass:
        return tokens_per_pass
    return CPU_PASS_TOKENS if device == "cpu" else None


def pass_tokens(budget: int | None, seq: int, tokens_per_batch: int) -> int:
    """The most token slots one pass holds (for the memory forecast): the whole batch without
    a budget, else the budget or one lane of `seq` (the longest row), rounded up to the width
    quantum."""
    if budget is None:
        return tokens_per_batch
    return min(max(budget, pass_width(seq)), pass_width(tokens_per_batch))


def pass_width(width: int, quantum: int = PASS_WIDTH_QUANTUM) -> int:
    """`width` padded up to the next pass width: a multiple of a quarter of the power of two
    below it, at least PASS_WIDTH_MIN_STEP (or `quantum`, if smaller), at most `quantum`."""
    step = (1 << max(width.bit_length() - 1, 0)) // PASS_WIDTH_STEPS_PER_OCTAVE
    return _round_up(width, min(quantum, max(min(PASS_WIDTH_MIN_STEP, quantum), step)))


def pack_lanes(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: row indices grouped into lanes whose lengths sum to at most
    `capacity`. Each row goes, longest first, into the fullest lane it still fits in."""
    lanes: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"row of {n} tokens is longer than the lane capacity {capacity}")
        best = min((k for k in range(len(lanes)) if room[k] >= n), key=lambda k: room[k], default=None)
        if best is None:
            lanes.append([i])
            room.append(capacity - n)
        else:
            lanes[best].append(i)
            room[best] -= n
    return lanes


@dataclass
class PackedBatch:
    """Collator: rows → lanes of concatenated rows with restarting position_ids."""

    pad_token_id: int
    single_lane: bool = False  # one lane for the whole batch (variable-length flash attention)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        capacity = sum(lengths) if self.single_lane else max(lengths)
        lanes = pack_lanes(lengths, capacity)
        width = max(sum(lengths[i] for i in lane) for lane in lanes)
        ids, pos, labels, shifted = [], [], [], []
        for lane in lanes:
            l_ids, l_pos, l_lab, l_shift = [], [], [], []
            for i in lane:
                row_ids, row_lab = list(features[i]["input_ids"]), list(features[i]["labels"])
                l_ids += row_ids
                l_pos += range(len(row_ids))
                l_lab += [IGNORE_INDEX] + row_lab[1:]
                l_shift += row_lab[1:] + [IGNORE_INDEX]
            pad = width - len(l_ids)
            # The padding tail is a row of its own (positions restart at 0): nothing attends to
            # it, and nothing in it is trained.
            ids.append(l_ids + [self.pad_token_id] * pad)
            pos.append(l_pos + list(range(pad)))
            labels.append(l_lab + [IGNORE_INDEX] * pad)
            shifted.append(l_shift + [IGNORE_INDEX] * pad)
        return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(pos),
                "labels": torch.tensor(labels), "shift_labels": torch.tensor(shifted),
                "real_tokens": torch.tensor(sum(lengths)),
                "lane_tokens": torch.tensor([sum(lengths[i] for i in lane) for lane in lanes])}


def split_passes(batch: dict[str, torch.Tensor], budget: int, pad_token_id: int,
                 quantum: int = PASS_WIDTH_QUANTUM) -> list[dict[str, torch.Tensor]]:
    """A packed batch (PackedBatch's) cut into passes of consecutive whole lanes, each at most
    `budget` token slots (a lane longer than that is a pass of its own), each trimmed to its
    longest lane and padded to `pass_width` (the padding is a row of its own, trained on by
    nothing, like a lane's padding tail)."""
    lane_tokens = batch["lane_tokens"].tolist()
    passes, start = [], 0
    while start < len(lane_tokens):
        end, width = start + 1, lane_tokens[start]
        while end < len(lane_tokens) and \
                pass_width(max(width, lane_tokens[end]), quantum) * (end + 1 - start) <= budget:
            width = max(width, lane_tokens[end])
            end += 1
        lanes, width = end - start, pass_width(width, quantum)
        part = {}
        for key, fill in (("input_ids", pad_token_id), ("labels", IGNORE_INDEX), ("shift_labels", IGNORE_INDEX),
                          ("position_ids", None)):
            have = batch[key][start:end, :width]
            extra = width - have.shape[1]
            if extra:
                tail = torch.arange(extra).expand(lanes, extra) if fill is None else \
                    torch.full((lanes, extra), fill, dtype=have.dtype)
                have = torch.cat([have, tail], dim=1)
            part[key] = have
        part["real_tokens"] = torch.tensor(sum(lane_tokens[start:end]))
        part["lane_tokens"] = batch["lane_tokens"][start:end]
        passes.append(part)
        start = end
    return passes


def _round_up(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum
