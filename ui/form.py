"""Widget values → RunConfig, in one function, and the presets that fill the widgets.

Pure Python (no gradio): the Train tab builds the widgets, this module decides what their
values mean. Unit-tested in tests/test_ui_units.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, get_args

from ft_engine.config import ALL_LINEAR, BUNDLED_MODEL, HUB_ID, SHORT_RUN_LEARNING_RATES, RunConfig, Strategy
from ft_engine.errors import ConfigError, UserError

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
    "Quick demo": SHORT_RUN_LEARNING_RATES,
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

STRATEGY_LABELS = {"ddp": "DDP: each GPU holds the whole model (fastest when it fits)",
                   "fsdp": "FSDP: the model is split over the GPUs (for models one GPU cannot hold)"}
STRATEGY_CHOICES = [(STRATEGY_LABELS[s], s) for s in get_args(Strategy)]  # RunConfig's own type


def gpus_markdown(names: list[str]) -> str:
    """The line under the method saying what the run will train on."""
    if not names:
        return "<small>Trains on this machine's **CPU** (no NVIDIA GPU found).</small>"
    listed = ", ".join(f"GPU {i} · {name}" for i, name in enumerate(names))
    if len(names) == 1:
        return f"<small>Trains on **{listed}**.</small>"
    return (f"<small>{len(names)} GPUs found: {listed}. With *Use all*, one process trains on each "
            f"(accelerate launch) and every step takes a batch on each GPU.</small>")


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
    if text.startswith(("/", "./")):
        if not (Path(text) / "config.json").is_file():
            raise ConfigError([f"no model folder at {text}: give the path of a folder saved with save_pretrained() "
                               f"(it holds config.json), '{BUNDLED_MODEL}', or a hub id like owner/name"])
        return text
    # Anything else must be 'bundled' or a hub id, decided from the text alone: the engine would
    # take a bare name such as 'assets' as a folder under the app's working folder if one is
    # there, and answer differently than for a name with nothing behind it.
    if text != BUNDLED_MODEL and not HUB_ID.fullmatch(text):
        raise ConfigError([f"model {text!r} is neither '{BUNDLED_MODEL}', a hub id of the form owner/name "
                           f"(e.g. meta-llama/Llama-3.2-1B-Instruct), nor a model folder given by its absolute "
                           f"path"])
    return text


# What settings_json of an API call may not set, because the call has its own parameter for it:
# merged, the parameter would win and the caller's value would be dropped without a word.
START_TRAINING_PARAMETERS = {"data": "data_path", "data_path": "data_path", "model": "model",
                             "method": "method", "preset": "preset", "start_anyway": "start_anyway"}
COMPARE_METHODS_PARAMETERS = {"data": "data_path", "data_path": "data_path", "model": "model",
                              "max_steps": "max_steps", "method": "methods", "methods": "methods",
                              "prompt": "prompt"}
# ...and what only the server decides
_SERVER_SETTINGS = {"runs_dir": "this studio writes every run into its own runs folder (FT_RUNS_DIR, set "
                                "where the server starts)"}
# the one text setting where "" means something (no name); elsewhere "" would be dropped as unset
_EMPTY_ALLOWED = {"run_name"}


def settings_from_json(text: Any, api: str, parameters: dict[str, str]) -> dict[str, Any]:
    """The settings_json of API call `api` as a dict, refused (one ConfigError naming every
    problem) where a key has its own parameter in `parameters`, is the server's to set, is no
    RunConfig setting, appears twice, or has no value (null, or "" that config_from_form would
    drop as an empty box): nothing a caller sends is ignored without a word."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise UserError(f"settings_json sets {', '.join(twice)} more than once: give each setting once")
        return dict(pairs)

    if text is None or text == "":
        return {}
    if not isinstance(text, str):
        raise UserError(f"settings_json must be text holding a JSON object such as {{\"max_steps\": 5}}, "
                        f"got {type(text).__name__}")
    try:
        settings = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise UserError(f"settings_json is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
                        f"give an object such as {{\"max_steps\": 5}}") from None
    except RecursionError:  # json recurses once per [ or {: a raw RecursionError reached the page (issue 11)
        raise UserError("settings_json is nested too deeply to read: give one flat object such as "
                        "{\"max_steps\": 5}") from None
    except ValueError:  # no syntax error: json's other ValueError is int() refusing over 4,300 digits
        raise UserError("settings_json holds a number of more than 4,300 digits: give ordinary numbers, "
                        "e.g. {\"max_steps\": 5}") from None
    if not isinstance(settings, dict):
        raise UserError(f"settings_json must be a JSON object such as {{\"max_steps\": 5}}, got "
                        f"{type(settings).__name__ if settings is not None else 'null'}")
    known = [f.name for f in dataclasses.fields(RunConfig)]
    settable = [k for k in known if k not in parameters and k not in _SERVER_SETTINGS]
    problems = []
    for key, value in settings.items():
        if key in parameters:
            problems.append(f"settings_json cannot set {key}: use the `{parameters[key]}` parameter of {api}")
        elif key in _SERVER_SETTINGS:
            problems.append(f"settings_json cannot set {key}: {_SERVER_SETTINGS[key]}")
        elif key not in known:
            problems.append(f"settings_json: unknown setting {key!r} (settings it can set: {', '.join(settable)})")
        elif value is None or (value == "" and key not in _EMPTY_ALLOWED):
            problems.append(f"settings_json gives {key} no value ({json.dumps(value)}): give a value or leave "
                            f"{key} out")
    if problems:
        raise ConfigError(problems)
    return settings


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
    if "use_all_gpus" in v:  # the Train tab's checkbox, shown with 2+ GPUs: all of them, or the first
        v["devices"] = "auto" if v.pop("use_all_gpus") else "1"
    config = RunConfig.from_dict(v)  # types checked here, so the caps below compare numbers
    steps_cap, rows_cap = max_steps_cap(), max_rows_cap()
    if steps_cap > 0:
        # A public demo must not train for hours: cap the steps, and turn epochs into a capped count.
        config.max_steps = min(config.max_steps or steps_cap, steps_cap)
    if rows_cap > 0:
        # nor on a huge file: only its first rows (the Data tab and the run's events say so)
        config.max_rows = min(config.max_rows or rows_cap, rows_cap)
    return config.validate(check_paths=check_paths)
