"""Open a run's chat model from any thread: the way in to inference.py for the studio.

inference.py imports torch and transformers at its top, so a thread may import it only after
stack.load() (stack.py says why); the studio opens chat models from its request threads. This
module is light to import and loads the stack before it imports inference.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import stack
from .rundir import RunDir

if TYPE_CHECKING:
    from .inference import ChatModel


def open_chat_model(run: RunDir, training_run: str | None = None, run_gpus: int = 1) -> ChatModel:
    """The run's ChatModel, loaded on the device inference.chat_device picks: never a GPU that
    `training_run` (training on `run_gpus` GPUs) uses. Raises UserError when the run has no
    trained result, or when every GPU is training it."""
    stack.load()
    from .inference import ChatModel, chat_device
    return ChatModel(run, device=chat_device(training_run=training_run, run_gpus=run_gpus))
