"""Fine-Tune Studio's engine: full fine-tuning, LoRA and QLoRA from one RunConfig.

Never imports gradio; the studio (ui/) and the command line (`python -m ft_engine`) drive it.
"""

from .config import RunConfig
from .errors import ConfigError, DataError, UserError
from .rundir import RunDir, Status, list_runs, open_run

__all__ = ["RunConfig", "ConfigError", "DataError", "UserError", "RunDir", "Status", "list_runs", "open_run"]
