"""Widget values → RunConfig, in one function, and the presets that fill the widgets.

Pure Python (no gradio): the Train tab builds the widgets, this module decides what their
values mean. Unit-tested in tests/test_ui_form.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ft_engine.config import ALL_LINEAR, BUNDLED_MODEL, RunConfig
from ft_engine.errors import ConfigError

from .limits import max_rows_cap, max_steps_cap

# The hyperparameter widgets of the Train tab, in display order; names are RunConfig fields.
# The data settings (max_seq_len, val_fraction, train_on_prompt, data_format) live in the
# Data tab, next to the preview they change.
ADVANCED_FIELDS = [
    "learning_rate", "max_steps", "epochs", "max_rows", "batch_size", "grad_accum",
    "tokens_per_pass", "warmup_ratio", "scheduler", "weight_decay", "max_grad_norm", "optimizer",
    "activation_checkpointing", "seed", "logging_steps", "eval_steps",
    "checkpoint_steps", "checkpoints_kept", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "quant_type", "double_quant", "compute_dtype", "precision",
]

LORA_TARGETS = [ALL_LINEAR, "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Learning rates differ by method: adapters start from zero and need larger steps than a
# full fine-tune, which moves weights that already work.
_LR = {
    "Quick demo": {"full": 5e-5, "lora": 1e-3, "qlora": 1e-3},
    "Balanced": {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4},
    "Thorough": {"full": 1e-5, "lora": 1e-4, "qlora": 1e-4},
}

PRESETS: dict[str, dict[str, Any]] = {
    # ~30 steps of ~3-4 s on a 2-core CPU with the bundled model: about two minutes
    "Quick demo": dict(max_steps=30, epochs=1.0, batch_size=4, grad_accum=1, max_seq_len=256,
                       warmup_ratio=0.0, scheduler="constant", lora_r=16, lora_alpha=32,
                       checkpoint_steps=10, eval_steps=0),
    "Balanced": dict(max_steps=0, epochs=1.0, batch_size=4, grad_accum=2, max_seq_len=512,
                     warmup_ratio=0.03, scheduler="cosine", lora_r=16, lora_alpha=32,
                     checkpoint_steps=50, eval_steps=25),
    "Thorough": dict(max_steps=0, epochs=3.0, batch_size=4, grad_accum=4, max_seq_len=1024,
                     warmup_ratio=0.05, scheduler="cosine", lora_r=32, lora_alpha=64,
                     checkpoint_steps=100, eval_steps=50),
}

METHOD_CARDS = {
    "lora": ("**LoRA** — the usual choice.\n\n"
             "*What changes:* small add-on matrices (a few MB) learn beside the frozen model.\n\n"
             "*Memory:* the model plus a little. *Speed:* fast.\n\n"
             "*Choose it when:* you want a quick, cheap change of style or knowledge."),
    "qlora": ("**QLoRA** — LoRA on a 4-bit compressed model.\n\n"
              "*What changes:* the same add-ons, but the frozen model is stored in 4 bits.\n\n"
              "*Memory:* least for big models on a GPU. *Speed:* on a CPU a bit slower than LoRA "
              "(weights are unpacked at every step).\n\n"
              "*Choose it when:* the model does not fit in memory otherwise."),
    "full": ("**Full fine-tuning** — every weight learns.\n\n"
             "*What changes:* the whole model; the result is a complete copy.\n\n"
             "*Memory:* most (about 16 bytes per parameter). *Speed:* slowest.\n\n"
             "*Choose it when:* the model is small and you want the biggest change."),
}


def preset_values(preset: str, method: str) -> dict[str, Any]:
    """The widget values a preset sets, with the learning rate for the chosen method."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[preset], "learning_rate": _LR[preset].get(method, _LR[preset]["lora"])}


def _int(value: Any) -> Any:
    """gr.Number gives floats; whole numbers become ints, anything else is left for validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_model_value(model: Any) -> str:
    """The model a studio user asked for, refused when it plays path tricks.

    Through the studio a model is 'bundled', a hub id (owner/name) or a model folder on the
    server; '..', '~', backslashes and control characters are refused outright, so a user
    value can't walk the server's folders (the engine's own check then says whether a folder
    holds a model). Raises ConfigError naming the setting and the fix."""
    text = model.strip() if isinstance(model, str) else model
    if not isinstance(text, str) or not text:
        raise ConfigError([f"model is empty: use '{BUNDLED_MODEL}', a hub id like owner/name, or a model folder"])
    parts = re.split(r"[/\\]", text)
    if ".." in parts or text.startswith("~") or "\\" in text or any(ord(c) < 32 for c in text):
        raise ConfigError([f"model {text!r} is not accepted here ('..', '~', '\\' and control characters "
                           f"are refused): use '{BUNDLED_MODEL}', a hub id like owner/name, or the absolute "
                           f"path of a model folder"])
    # A path gets one answer whether nothing is there, a file, or a folder without a model, so
    # a visitor can't map the server's folders by trying paths.
    if text.startswith(("/", "./")) and not (Path(text) / "config.json").is_file():
        raise ConfigError([f"no model folder at {text}: give the path of a folder saved with save_pretrained() "
                           f"(it holds config.json), '{BUNDLED_MODEL}', or a hub id like owner/name"])
    return text


def config_from_form(values: dict[str, Any], *, check_paths: bool = True) -> RunConfig:
    """Build the RunConfig from the studio's widget values (names are RunConfig fields).

    Numbers typed into number boxes arrive as floats, empty boxes as None; targets as a list
    from a checkbox group. The result is validated: a ConfigError lists every bad value.
    Demo caps (FT_MAX_STEPS, FT_MAX_ROWS) are applied here, for the UI and the API alike, so
    a public Space can't be asked for more; a model value with path tricks is refused.
    check_paths=False: for a forecast, which needs the settings but not the data file yet.
    """
    v = {k: val for k, val in values.items() if val is not None and val != ""}
    for key in ("max_steps", "max_rows", "batch_size", "grad_accum", "max_seq_len", "seed", "logging_steps",
                "eval_steps", "checkpoint_steps", "checkpoints_kept", "lora_r", "lora_alpha"):
        if key in v:
            v[key] = _int(v[key])
    targets = v.get("lora_target_modules")
    if isinstance(targets, (list, tuple)):
        # "all-linear" already covers every other choice; an empty choice means the default
        v["lora_target_modules"] = [ALL_LINEAR] if (not targets or ALL_LINEAR in targets) else list(targets)
    if "model" in v:
        v["model"] = check_model_value(v["model"])
    config = RunConfig.from_dict(v)  # types checked here, so the caps below compare numbers
    steps_cap, rows_cap = max_steps_cap(), max_rows_cap()
    if steps_cap > 0:
        # A public demo must not train for hours: cap the steps, and turn epochs into a capped count.
        config.max_steps = min(config.max_steps or steps_cap, steps_cap)
    if rows_cap > 0:
        # nor on a huge file: only its first rows (the Data tab and the run's events say so)
        config.max_rows = min(config.max_rows or rows_cap, rows_cap)
    return config.validate(check_paths=check_paths)
