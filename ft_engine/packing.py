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

Labels: `labels` keep the model's convention (the model shifts them), with the first token of
every row set to -100 so no row learns to predict the next row's first token. `shift_labels`
are the same targets already shifted (token i is trained to predict shift_labels[i]); the
engine's chunked loss reads those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .render import IGNORE_INDEX


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
                "real_tokens": torch.tensor(sum(lengths))}
