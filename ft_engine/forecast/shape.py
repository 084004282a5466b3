"""A model's shape from its config alone (no weights; no network for local folders): its
dimensions and exact parameter counts by layer type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

LLAMA_1B_SHAPE = "llama-3.2-1b-shape"
"""A built-in config with Llama 3.2 1B's published shape, to plan without weights or network."""

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEARS = ATTENTION + MLP
"""What peft's `all-linear` targets in a Llama-style decoder (every linear but lm_head)."""

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's dimensions and exact parameter counts by layer type.

    Counts per layer (h hidden, n heads, g kv heads, d head_dim, I intermediate, V vocab):
    q = h*n*d, k = v = h*g*d, o = n*d*h (+ biases where the config has them),
    gate = up = h*I, down = I*h, norms = 2*h; embedding = V*h, final norm = h,
    lm_head = V*h, or 0 when tied to the embedding (one shared tensor)."""

    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    checkpoint_dtype: str = "float32"
    """dtype of the weights in the model's files (config.json `dtype`; fp32 when it doesn't
    say): what loading reads, and on CPU what stays mapped in memory (see `forecast`)."""

    @property
    def checkpoint_bytes(self) -> int:
        """Bytes of the weights in the model's safetensors files (every parameter once; a tied
        lm_head is stored once)."""
        return DTYPE_BYTES.get(self.checkpoint_dtype, 4) * self.total

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_bias(self, name: str) -> int:
        _, out = self.linear_dims()[name]
        return out if (self.attention_bias and name in ATTENTION) or (self.mlp_bias and name in MLP) else 0

    def linear_params(self, name: str) -> int:
        """Weight + bias of one linear layer of one decoder layer."""
        i, o = self.linear_dims()[name]
        return i * o + self.linear_bias(name)

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def norms_per_layer(self) -> int:
        return 2 * self.hidden

    @property
    def final_norm(self) -> int:
        return self.hidden

    @property
    def lm_head(self) -> int:
        """Extra parameters of the output head: 0 when tied to the embedding."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def per_layer(self) -> int:
        return sum(self.linear_params(n) for n in LINEARS) + self.norms_per_layer

    @property
    def linear_total(self) -> int:
        """Parameters (weights and biases) of all decoder linears: what QLoRA quantizes."""
        return self.layers * sum(self.linear_params(n) for n in LINEARS)

    @property
    def total(self) -> int:
        return self.embedding + self.layers * self.per_layer + self.final_norm + self.lm_head

    def counts(self) -> dict[str, int]:
        """Parameter counts by layer type (per layer for the decoder's own layers)."""
        out = {"embedding": self.embedding}
        out.update({n: self.linear_params(n) for n in LINEARS})
        out.update(norms_per_layer=self.norms_per_layer, final_norm=self.final_norm, lm_head=self.lm_head,
                   per_layer=self.per_layer, total=self.total)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "params": self.counts()}


def llama_1b_config():
    """Llama 3.2 1B's published shape (config.json of meta-llama/Llama-3.2-1B): 1.24 B params."""
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                       max_position_embeddings=131072, dtype="bfloat16")


_SUPPORTED = {"llama", "mistral", "qwen2"}


def model_shape(model) -> ModelShape:
    """The shape of `model`: a RunConfig model string (`bundled`, a local folder, a hub id,
    or `llama-3.2-1b-shape`) or a transformers PretrainedConfig. Reads config.json only.
    Callable from any thread: it loads the ML stack itself (stack.py)."""
    from .. import stack
    stack.load()
    from transformers import PretrainedConfig
    if isinstance(model, PretrainedConfig):
        cfg, name = model, getattr(model, "name_or_path", "") or model.model_type
    elif isinstance(model, str) and model == LLAMA_1B_SHAPE:
        cfg, name = llama_1b_config(), LLAMA_1B_SHAPE
    elif isinstance(model, str):
        from ..config import _check_model_id
        from ..models import load_config
        problems = _check_model_id(model)
        if problems:
            raise UserError(problems[0] + f" (or '{LLAMA_1B_SHAPE}' to plan with Llama 3.2 1B's shape)")
        cfg, name = load_config(model), model
    else:
        raise UserError(f"model must be a model name or a transformers config, got {type(model).__name__}")

    mtype = getattr(cfg, "model_type", "?")
    if mtype not in _SUPPORTED:
        raise UserError(f"the memory forecast knows Llama-style decoders ({', '.join(sorted(_SUPPORTED))}); "
                        f"{name} is a '{mtype}' model")
    heads = cfg.num_attention_heads
    return ModelShape(
        name=str(name), model_type=mtype, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        attention_bias=bool(getattr(cfg, "attention_bias", mtype == "qwen2")),
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        checkpoint_dtype=_dtype_name(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)),
    )


def _dtype_name(dtype) -> str:
    """'float32', 'bfloat16' or 'float16' from a config's dtype (a torch.dtype, a string or
    None); anything else counts as float32, the largest, so a forecast errs on the safe side."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in DTYPE_BYTES else "float32"

