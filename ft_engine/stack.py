"""Load torch, transformers, peft and the engine's modules that use them: once, one thread at a time.

transformers 5 resolves its names lazily (`from transformers import Trainer` imports the
submodule on first use). When two threads resolve names at the same moment, CPython's import
deadlock detection can hand one of them the other's half-initialised submodule, and the import
fails with "cannot import name 'PrinterCallback' from 'transformers'". The studio imports from
several threads (the start-up thread that prepares the bundled model, request handlers, the
training worker), so each of them calls `load()` before its first use of the stack: the first
caller imports everything, the others wait for it and then find everything in place.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_loaded = False


def load() -> None:
    """Import the whole machine-learning stack if it is not imported yet (seconds, once)."""
    global _loaded
    if _loaded:  # the common case: no lock to take
        return
    with _lock:
        if _loaded:
            return
        # every name the engine imports lazily, so none is resolved later from another thread
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers
        from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training  # noqa: F401
        for name in ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "BitsAndBytesConfig", "LlamaConfig",
                     "PretrainedConfig", "PrinterCallback", "TextIteratorStreamer", "Trainer", "TrainerCallback",
                     "TrainingArguments"):
            getattr(transformers, name)
        from . import export, forecast, inference, models, preview, training  # noqa: F401
        _loaded = True
