"""The transformers Trainer, fed padding-free batches and a loss that never builds full logits.

Everything else (optimizer, schedule, gradient accumulation, checkpoints, resume, eval,
callbacks) is the stock Trainer's. Only `compute_loss` changes: the decoder runs on the packed
lanes (packing.py), and the loss goes through the output head in chunks (loss.py) on the
trained positions only.

Loss normalisation is the Trainer's own: with gradient accumulation it passes
`num_items_in_batch`, the trained tokens of all micro-batches of the optimizer step, counted
from `shift_labels`; each micro-batch's summed loss is divided by that, so the step's loss is
the token-weighted mean over the whole step, as for padded batches.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer

from .loss import fused_cuda_loss_available, fused_cuda_loss_sum, linear_cross_entropy_sum
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


class LeanTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Our compute_loss divides by num_items_in_batch; make the Trainer count it (from the
        # batch's shift_labels) and not divide again by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = None

    def _loss_sum(self, model, inputs) -> tuple[torch.Tensor, int]:
        """(summed loss over trained tokens, their number) for one packed batch."""
        targets = inputs["shift_labels"]
        lm = causal_lm(self.accelerator.unwrap_model(model))
        with self.accelerator.autocast():
            if plain_head(lm):
                hidden = lm.get_decoder()(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                                          use_cache=False).last_hidden_state
                loss_fn = fused_cuda_loss_sum if fused_cuda_loss_available(hidden.device) \
                    else linear_cross_entropy_sum
                return loss_fn(hidden, lm.get_output_embeddings().weight, targets)
            logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                           use_cache=False).logits.float()
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               ignore_index=IGNORE_INDEX, reduction="sum")
            return loss, int((targets != IGNORE_INDEX).sum())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # tokens/s counts real tokens only: the padding tail is not work
            self.state.num_input_tokens_seen += int(inputs["real_tokens"])
        loss_sum, count = self._loss_sum(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        if torch.is_tensor(denominator):
            denominator = denominator.to(loss_sum.device)
        loss = loss_sum / denominator
        return (loss, {"loss": loss}) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The held-out loss as the mean over every held-out trained token (the stock loop
        averages per-batch means weighted by rows, which a packed batch does not have)."""
        model = self.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self.get_eval_dataloader(eval_dataset):
                loss_sum, n = self._loss_sum(model, self._prepare_inputs(batch))
                total, count = total + float(loss_sum), count + n
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_loss": total / max(count, 1)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
