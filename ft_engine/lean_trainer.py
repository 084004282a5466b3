"""The transformers Trainer, fed padding-free batches and a loss that never builds full logits.

Everything else (optimizer, schedule, gradient accumulation, checkpoints, resume, eval,
callbacks) is the stock Trainer's. Only `compute_loss` changes: the decoder runs on the packed
lanes (packing.py), and the loss goes through the output head in chunks (loss.py) on the
trained positions only.

A batch may go through the model in several passes (packing.split_passes, `pass_budget`
token slots each): `training_step` runs forward and backward per pass, so only one pass's
activations exist at a time, and the summed gradients are the whole batch's.

Loss normalisation is the Trainer's own: with gradient accumulation it passes
`num_items_in_batch`, the trained tokens of all micro-batches of the optimizer step, counted
from `shift_labels`; each micro-batch's summed loss is divided by that, so the step's loss is
the token-weighted mean over the whole step, as for padded batches.
"""

from __future__ import annotations

import contextlib
import time

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn
from transformers import Trainer

from . import distributed
from .lean_optimizer import AdamWInBackward
from .loss import (
    LossWorkspace,
    SharedHeadGradient,
    fused_cuda_loss_available,
    fused_cuda_loss_sum,
    linear_cross_entropy_sum,
    tied_embedding,
)
from .packing import split_passes
from .render import IGNORE_INDEX

# Config attributes that change logits after the head (Gemma's soft-capping, Cohere's scale):
# a model with any of them set goes through its own forward and loss instead.
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM inside a (peft-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_head(lm: nn.Module) -> bool:
    """True when logits are exactly hidden · Wᵀ (a bias-free Linear head, nothing after it)."""
    head = lm.get_output_embeddings()
    return (type(head) is nn.Linear and head.bias is None
            and not any(getattr(lm.config, a, None) for a in _HEAD_EXTRAS))


def trains_tied_embedding(lm: nn.Module) -> bool:
    """The output head is the (plain) input embedding's weight, and it trains (full
    fine-tuning of SmolLM2, Llama 3.2 1B/3B...)."""
    head, emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    return (head is not None and type(emb) is nn.Embedding and head.weight is emb.weight
            and emb.weight.requires_grad and torch.is_grad_enabled())


def packed_loss_sum(model: nn.Module, lm: nn.Module, inputs: dict, defer_head_gradient: bool = False,
                    workspace: LossWorkspace | None = None) -> tuple[torch.Tensor, int]:
    """(summed loss over trained tokens, their number) for one packed batch (packing.py).
    `model` is what is trained (maybe peft-wrapped), `lm` the *ForCausalLM inside it.
    defer_head_gradient: a trained tied head's gradient is made at the end of backward, not in
    the loss's forward (loss.SharedHeadGradient: less memory, one more head matmul)."""
    targets = inputs["shift_labels"]
    if not plain_head(lm):
        logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                       use_cache=False).logits.float()
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, int((targets != IGNORE_INDEX).sum())
    decoder, weight = lm.get_decoder(), lm.get_output_embeddings().weight
    if trains_tied_embedding(lm) and not fused_cuda_loss_available(weight.device):
        # one vocabulary-sized gradient for the shared weight, not three (loss.tied_embedding)
        shared = SharedHeadGradient(defer=defer_head_gradient)
        embeds = tied_embedding(inputs["input_ids"], lm.get_input_embeddings(), shared)
        hidden = decoder(inputs_embeds=embeds, position_ids=inputs["position_ids"], use_cache=False).last_hidden_state
        return linear_cross_entropy_sum(hidden, weight, targets, shared, workspace)
    hidden = decoder(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                     use_cache=False).last_hidden_state
    if fused_cuda_loss_available(hidden.device):
        return fused_cuda_loss_sum(hidden, weight, targets)
    return linear_cross_entropy_sum(hidden, weight, targets, workspace=workspace)


class LeanTrainer(Trainer):
    def __init__(self, *args, defer_head_gradient: bool = False, pass_budget: int | None = None,
                 loss_workspace: LossWorkspace | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.defer_head_gradient = defer_head_gradient  # see packed_loss_sum
        self.loss_workspace = loss_workspace  # the loss's reused chunk buffers (loss.LossWorkspace)
        self.pass_budget = pass_budget  # token slots per pass (packing.pass_budget); None: one pass
        # Our compute_loss divides by num_items_in_batch; make the Trainer count it (from the
        # batch's shift_labels) and not divide again by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = None
        # Seconds spent evaluating and saving checkpoints, which are not training: tokens/s
        # counts training time only (training._RunCallback reads this).
        self.paused_s = 0.0
        # real tokens this process trained since the last sync_step (all processes' are summed there)
        self._tokens_since_sync = 0

    def create_accelerator_and_postprocess(self) -> None:
        """The stock accelerator, and FSDP on a CPU too. accelerate turns FSDP on only for GPU-like
        devices and keeps processes on CPUs (gloo) as plain DDP, though torch's FSDP2 shards
        over gloo just as over NCCL: the strategy asked for is the one run, on any machine (and
        the multi-process tests on a CPU test FSDP, not DDP under its name)."""
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled \
                and state.distributed_type == DistributedType.MULTI_CPU:
            plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            if state.mixed_precision != "no":
                plugin.set_mixed_precision(state.mixed_precision)
            state.fsdp_plugin = plugin
            state.distributed_type = DistributedType.FSDP
            # as AcceleratorState does for GPUs: every later AcceleratorState() re-reads it from there
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True
        if self.is_fsdp_enabled and state.mixed_precision in ("bf16", "fp16"):
            # accelerate's default policy casts the forward's outputs to half precision and
            # reduces gradients in it: the loss sum (thousands of tokens) would round to a
            # quarter of a unit, and gradients lose bits DDP keeps. Compute in half, reduce in
            # fp32, outputs as computed (the packed loss is fp32).
            from torch.distributed.fsdp import MixedPrecisionPolicy
            half = torch.bfloat16 if state.mixed_precision == "bf16" else torch.float16
            state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=half,
                                                                            reduce_dtype=torch.float32)

    @contextlib.contextmanager
    def _paused(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t0

    def _save_checkpoint(self, model, trial) -> None:
        with self._paused():
            super()._save_checkpoint(model, trial)

    def _loss_sum(self, model, inputs) -> tuple[torch.Tensor, int]:
        """The packed loss, computed inside `model`'s own call. Under DDP or FSDP `model` is the
        wrapper, and the wrapper's call is where gradients are set up to be averaged (DDP) and
        sharded weights gathered (FSDP); reaching into the model's decoder around it would train
        each process alone, or find its weights missing."""
        inner = self.accelerator.unwrap_model(model)
        lm = causal_lm(inner)

        def loss_inside(*_args, **_kwargs):
            with self.accelerator.autocast():
                return packed_loss_sum(inner, lm, inputs, self.defer_head_gradient, self.loss_workspace)
        with _forward_replaced(inner, loss_inside):
            return model()

    def sync_step(self, stop: bool) -> bool:
        """At the end of each optimizer step, on every process: add up the real tokens all
        processes trained (the count tokens/s is made of) and whether any of them was asked to
        stop; True means all of them stop now, at the same step. One all-reduce, none alone."""
        tokens, stops = distributed.sum_across(self._tokens_since_sync, 1.0 if stop else 0.0)
        self.state.num_input_tokens_seen += int(tokens)
        self._tokens_since_sync = 0
        return stops > 0

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """With adamw_lean the Trainer has no gradient norm (it clips nothing): log the one the
        optimizer measured while it stepped."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        if "grad_norm" in logs and isinstance(inner, AdamWInBackward) and inner.last_grad_norm is not None:
            logs["grad_norm"] = inner.last_grad_norm
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The stock step once per pass of the batch (packing.split_passes). Each pass's loss
        is divided by the trained tokens of the whole batch (or of the whole accumulated step,
        which the Trainer passes), so the summed gradients and the returned loss are the
        batch's. Under distributed training only the last pass synchronises gradients."""
        if self.pass_budget is None or "lane_tokens" not in inputs:
            return super().training_step(model, inputs, num_items_in_batch)
        passes = split_passes(inputs, self.pass_budget, self.processing_class.pad_token_id)
        if len(passes) == 1:
            return super().training_step(model, passes[0], num_items_in_batch)
        if num_items_in_batch is None:
            num_items_in_batch = int((inputs["shift_labels"] != IGNORE_INDEX).sum())
        total = None
        for i, part in enumerate(passes):
            last = i == len(passes) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                loss = super().training_step(model, part, num_items_in_batch)
            total = loss if total is None else total + loss
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # tokens/s counts real tokens only: the padding tail is not work
            self._tokens_since_sync += int(inputs["real_tokens"])
        loss_sum, count = self._loss_sum(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        if torch.is_tensor(denominator):
            denominator = denominator.to(loss_sum.device)
        loss = loss_sum / denominator
        if num_items_in_batch is not None and self.args.average_tokens_across_devices \
                and self.accelerator.num_processes > 1:
            # num_items_in_batch counts every process's trained tokens, and DDP / FSDP average
            # the gradients over processes: times their number, the step's gradient is the sum
            # over all its tokens divided by their count, as in one process (the stock
            # compute_loss does the same)
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The held-out loss as the mean over every held-out trained token (the stock loop
        averages per-batch means weighted by rows, which a packed batch does not have)."""
        with self._paused():
            metrics = self._held_out_loss(eval_dataset, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _held_out_loss(self, eval_dataset, metric_key_prefix: str) -> dict[str, float]:
        """Every process evaluates every held-out row, in order: the held-out set is small, the
        answer is the same number everywhere (no shards to add up, no padding rows repeated to
        even them out), and under FSDP every process must take part in each forward anyway."""
        from torch.utils.data import DataLoader
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        rows = eval_dataset if eval_dataset is not None else self.eval_dataset
        batches = DataLoader(rows, batch_size=self.args.per_device_eval_batch_size, shuffle=False,
                             collate_fn=self.data_collator)
        with torch.no_grad():
            for batch in batches:
                loss_sum, n = self._loss_sum(model, self._prepare_inputs(batch))
                total, count = total + float(loss_sum), count + n
        model.train(was_training)
        return {f"{metric_key_prefix}_loss": total / max(count, 1)}


@contextlib.contextmanager
def _forward_replaced(module: nn.Module, forward):
    """`module`'s next call runs `forward` instead (an attribute of this object only, the way
    accelerate itself wraps forward for mixed precision). The model's own forward is back as
    soon as that call starts: a head the packed loss cannot bypass runs it inside."""
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")

    def restore() -> None:
        if had_own:
            module.forward = previous
        else:
            module.__dict__.pop("forward", None)

    def once(*args, **kwargs):
        restore()
        return forward(*args, **kwargs)
    module.forward = once
    try:
        yield
    finally:
        restore()
