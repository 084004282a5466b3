"""A training job: RunConfig in, run directory out.

Lifecycle (as in torchtune's recipes): prepare → run (setup → train → save) → cleanup.

    job = TrainingJob(config)
    job.prepare()        # validates config and data, creates the run dir with status `queued`
    job.run()            # trains in this thread; or job.start() for a background thread
    job.stop()           # cooperative: the run ends after the current optimizer step

Everything a viewer needs is written to the run directory (see rundir.py); nothing else of
the job is meant to be read from outside.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PrinterCallback, TrainerCallback, TrainingArguments, set_seed

from . import distributed, memory
from .config import RunConfig
from .data import first_rows, load_examples, select_rows
from .disk import check_disk, planned_steps
from .errors import UserError, hide_tokens
from .forecast.estimate import keeps_loss_workspace, memory_first
from .lean_optimizer import AdamWInBackward
from .lean_trainer import LeanTrainer
from .loss import LossWorkspace
from .models import build_model, check_max_seq_len, load_tokenizer, resolve_precision
from .packing import PackedBatch, pass_budget
from .render import EncodedData, encode_all
from .rundir import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    DATA_FILE,
    METRICS_FILE,
    MODEL_DIR,
    STOP_FILE,
    FollowerRunDir,
    RunDir,
    Status,
    atomic_write_text,
    new_run_id,
    open_run,
    utc_now,
)

log = logging.getLogger(__name__)

_OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "sgd": "sgd"}


def trainer_optimizer(optimizer: str, cuda: bool) -> str:
    """The Trainer's `optim` for our optimizer name. On CUDA, AdamW is torch's fused kernel (one
    launch for every parameter instead of several per tensor); on a CPU the fused kernel is
    no faster than the for-each one, which stays."""
    if optimizer == "adamw_torch" and cuda:
        return "adamw_torch_fused"
    return _OPTIMIZERS[optimizer]


class OneDeviceArguments(TrainingArguments):
    """TrainingArguments that use one device whatever the machine has. On a machine with 2+
    GPUs the stock Trainer (not launched distributed) wraps the model in nn.DataParallel: the
    batch silently becomes batch_size × GPUs and the steps no longer match the studio's
    (issue 10). Spreading a run over GPUs is a deliberate choice (accelerate launch), not this.
    The run trains on cuda:0, the first GPU CUDA_VISIBLE_DEVICES shows."""

    @property
    def n_gpu(self) -> int:
        return min(super().n_gpu, 1)


def sharding(cfg: RunConfig, processes: int, layer_class: str | None) -> dict[str, Any]:
    """The Trainer's FSDP arguments for `cfg` on `processes` processes ({} for DDP or one
    process): FSDP2 (torch's fully_shard), each decoder layer its own unit so only one layer's
    weights are gathered at a time, resharded after forward (full sharding)."""
    if processes < 2 or cfg.strategy != "fsdp":
        return {}
    fsdp_config: dict[str, Any] = {"version": 2, "reshard_after_forward": True, "cpu_offload": cfg.fsdp_cpu_offload,
                                   "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": False,
                                   "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    if layer_class:
        fsdp_config["transformer_layer_cls_to_wrap"] = [layer_class]
    return {"fsdp": True, "fsdp_config": fsdp_config}


def training_arguments(cfg: RunConfig, run: RunDir, evaluates: bool, processes: int = 1,
                       layer_class: str | None = None) -> OneDeviceArguments:
    """The Trainer's arguments for `cfg` (optimizer already resolved); `evaluates`: the run
    holds out rows to evaluate on; `processes`: how many train it together (launch.py);
    `layer_class`: the decoder layer's class name (FSDP shards layer by layer)."""
    precision = resolve_precision(cfg)
    save = cfg.checkpoint_steps > 0
    lean = cfg.optimizer == "adamw_lean"
    clip = 0.0 if lean else cfg.max_grad_norm  # 0 = no clipping; adamw_lean cannot clip (see run())
    return OneDeviceArguments(
        output_dir=str(run.path / CHECKPOINTS_DIR),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps in transformers 5
        weight_decay=cfg.weight_decay,
        max_grad_norm=clip,
        optim=trainer_optimizer("adamw_torch" if lean else cfg.optimizer, torch.cuda.is_available()),
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if save else "no",
        save_steps=cfg.checkpoint_steps if save else 500,
        save_total_limit=cfg.checkpoints_kept,
        eval_strategy="steps" if (evaluates and cfg.eval_steps > 0) else "no",
        eval_steps=cfg.eval_steps or None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        include_num_input_tokens_seen="no",  # LeanTrainer counts real (non-padding) tokens itself
        label_names=["labels"],
        prediction_loss_only=True,
        # every trainable weight gets a gradient in every step: DDP need not search the graph for
        # unused ones (and the packed loss returns no logits to search from)
        ddp_find_unused_parameters=False,
        **sharding(cfg, processes, layer_class),
    )

class _RunCallback(TrainerCallback):
    """Writes metrics and status as training goes, and honours the stop event."""

    def __init__(self, job: "TrainingJob"):
        self.job = job
        self.run = job.run_dir
        self.t0 = time.perf_counter()
        self.last_t = self.t0
        self.last_tokens = 0
        # tokens/s counts training time only: seconds the trainer spent evaluating and saving
        # checkpoints (LeanTrainer.paused_s, set once the trainer exists) are taken out
        self.paused_s: Callable[[], float] = lambda: 0.0
        self.last_paused = 0.0
        self.train_s = 0.0  # training seconds of this session so far
        self.sync: Callable[[bool], bool] = lambda stop: stop  # LeanTrainer.sync_step, once it exists
        self.tokens_at_begin = 0

    def _elapsed(self) -> float:
        return round(self.job.elapsed_before + time.perf_counter() - self.t0, 3)

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_t = time.perf_counter()  # model loading is not training time for tokens/s
        self.last_tokens = self.tokens_at_begin = state.num_input_tokens_seen or 0
        self.last_paused = self.paused_s()
        # sharded: the weights this process holds are FSDP shards (torch DTensors), the proof that
        # strategy fsdp is what runs and not DDP under its name
        model = kwargs.get("model")
        sharded = model is not None and any(type(p).__name__ == "DTensor" for p in model.parameters())
        self.run.write_status(status=Status.RUNNING, step=state.global_step, total_steps=state.max_steps,
                              sharded=sharded)
        self.job.event("started", f"training {state.max_steps} steps", state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        # Write the step before looking at the stop flag: a stop asked for after anyone read
        # step N then ends the run at step N + 1 at the latest.
        self.run.write_status(step=state.global_step, epoch=round(state.epoch or 0, 4),
                              elapsed_s=self._elapsed())
        # every process of the run agrees here, in one all-reduce, whether to stop (and adds up
        # the tokens they trained); alone, the answer is just this process's
        if self.sync(self.job.stop_requested()):
            self.job.stopped_early = True
            control.should_training_stop = True
            control.should_save = False  # the final save below keeps what was trained

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        now = time.perf_counter()
        row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
        if "loss" in logs:
            tokens = state.num_input_tokens_seen or 0
            paused = self.paused_s()
            dt = max(now - self.last_t - (paused - self.last_paused), 1e-9)
            self.train_s += dt
            row.update(
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens_seen=int(tokens),
                tokens_per_second=round((tokens - self.last_tokens) / dt, 1),
            )
            self.last_t, self.last_tokens, self.last_paused = now, tokens, paused
        elif "eval_loss" in logs:
            row["eval_loss"] = logs["eval_loss"]
            self.job.event("evaluated", f"eval loss {logs['eval_loss']:.4f}", state.global_step)
        else:
            return  # end-of-training summary (train_runtime etc.): status.json gets those
        row["elapsed_s"] = self._elapsed()
        row.update(memory.snapshot())
        if self.job.forecast_mib is not None:
            row["mem_forecast_mib"] = self.job.forecast_mib  # prediction beside reality, every row
        self.run.append_metrics(row)
        log.info("step %d/%d %s mem %.0f MiB", state.global_step, state.max_steps,
                 f"loss {row['loss']:.4f} tok/s {row['tokens_per_second']:.0f}" if "loss" in row
                 else f"eval loss {row['eval_loss']:.4f}", row["mem_peak_mib"])

    def on_train_end(self, args, state, control, **kwargs):
        # the steps after the last logged one are training time too
        now, paused = time.perf_counter(), self.paused_s()
        self.train_s += max(now - self.last_t - (paused - self.last_paused), 0.0)
        self.last_t, self.last_tokens, self.last_paused = now, state.num_input_tokens_seen or 0, paused

    def tokens_per_second(self) -> float | None:
        """Real tokens trained in this session over its training seconds (not a mean of the
        logged rates: intervals differ in length, and evaluating and saving are not training)."""
        return round((self.last_tokens - self.tokens_at_begin) / self.train_s, 1) if self.train_s > 0 else None

    def on_save(self, args, state, control, **kwargs):
        self.job.event("checkpoint", f"checkpoint-{state.global_step} saved", state.global_step)


class TrainingJob:
    """One run of one RunConfig. Not reusable: a new run is a new job."""

    def __init__(self, config: RunConfig, run_dir: RunDir | None = None):
        self.config = config.validate()
        self.run_dir = run_dir
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.tokenizer = None
        self.encoded: EncodedData | None = None
        self.elapsed_before = 0.0  # seconds trained in earlier sessions of a resumed run
        self.resume_from: Path | None = None
        self.forecast_mib: float | None = None  # the memory forecast made for this run (peak)
        self.callback: _RunCallback | None = None  # made with the trainer
        # how many processes train this run together (launch.processes_for; set in prepare) and
        # whether this one is global rank 0, the one that writes the run directory
        self.processes = 1
        self.nodes = 1  # machines the run spans (the command line's --nodes)
        self.check_only = False  # prepare() checks settings and data but creates no run (other nodes)
        self.main = distributed.is_main()
        # the process that started this one (the studio, the command line): if it goes, the run
        # stops after its step and keeps what it trained, instead of training on unwatched
        self.supervisor = None
        self.stopped_early = False  # the processes agreed to stop before the last step

    # --- prepare: everything that can fail on user input, before anything is written ------
    def prepare(self) -> RunDir:
        """Validate data (tokenizer needed for lengths), then create the run dir as `queued`.
        A bad file or model raises UserError and leaves nothing on disk."""
        cfg = self.config
        if cfg.optimizer == "adamw_lean" and resolve_precision(cfg) == "fp16":
            # config validation refuses precision fp16 itself; `auto` becomes fp16 only here, on
            # a GPU without bf16 tensor cores (a T4)
            raise UserError("optimizer adamw_lean cannot undo fp16 loss scaling (its step runs inside backward), "
                            "and precision auto is fp16 on this GPU (no bf16 tensor cores): use optimizer "
                            "adamw_8bit or auto, or precision fp32")
        from .launch import processes_for
        # in a launched process the launcher's count; before launch, this machine's times the nodes
        self.processes = distributed.world_size() if distributed.world_size() > 1 else \
            processes_for(cfg) * self.nodes
        data = load_examples(cfg.data, cfg.data_format)
        rows_in_file = len(data.examples)
        data = first_rows(data, cfg.max_rows)
        self.tokenizer = load_tokenizer(cfg.model)
        check_max_seq_len(cfg.model, cfg.max_seq_len)
        self.encoded = encode_all(data, self.tokenizer, cfg.max_seq_len, cfg.train_on_prompt)
        n_val = len(select_rows(self.encoded.rows, cfg)[1])
        if len(self.encoded.rows) - n_val < 1:
            raise UserError(f"{cfg.data}: {len(self.encoded.rows)} usable rows leave nothing to train "
                            f"after holding out {n_val} for validation; lower val_fraction or add rows")
        # A run the disk cannot hold is refused now, not at a checkpoint hours in (disk.py); a
        # resumed run's own files count as room.
        disk_note = check_disk(cfg, planned_steps(cfg, len(self.encoded.rows) - n_val, self.processes),
                               self.run_dir.path if self.run_dir else None)
        if self.check_only:
            return None
        if self.run_dir is None:
            runs = Path(cfg.runs_dir)
            runs.mkdir(parents=True, exist_ok=True)
            self.run_dir = RunDir(runs / new_run_id(runs, cfg.run_name, cfg.method))
            self.run_dir.path.mkdir()
            atomic_write_text(self.run_dir.path / CONFIG_FILE, cfg.to_yaml())
            self.run_dir.write_json(DATA_FILE, {
                "file": str(cfg.data), "format": data.format, "description": data.describe(),
                "ignored_columns": data.ignored_columns, "val_rows": n_val,
                "train_rows": len(self.encoded.rows) - n_val, "rows_in_file": rows_in_file,
                "max_rows": cfg.max_rows, "system_prompt": data.system_prompt(),
                **recorded_split(self.encoded, cfg), **self.encoded.summary(),
            })
            self.run_dir.write_status(
                status=Status.QUEUED, name=cfg.run_name or self.run_dir.run_id, method=cfg.method,
                model=cfg.model, step=0, total_steps=None, created_at=utc_now(),
                started_at=None, ended_at=None, error=None, disk_forecast=disk_note, **self.scale())
            if len(data.examples) < rows_in_file:
                self.event("data", f"training on the first {len(data.examples)} of {rows_in_file} rows "
                                   f"(max_rows={cfg.max_rows})")
        return self.run_dir

    # --- run ---------------------------------------------------------------------------------
    def run(self) -> Status:
        """Train to the end (or to a stop). Never raises for a failed run: the failure is in
        status.json (and the log), and the returned status says `failed`."""
        if self.run_dir is None or self.encoded is None:
            self.prepare()
        run = self.run_dir
        model = trainer = None
        status = Status.FAILED
        try:
            # `optimizer: auto` is decided once, here, from the memory free now
            # (forecast.resolve_optimizer); config.yaml keeps `auto`, status.json the choice.
            self.config = cfg = self.config.replace(optimizer=self._resolve_optimizer())
            run.write_status(status=Status.RUNNING, started_at=utc_now(), error=None, ended_at=None,
                             optimizer=cfg.optimizer, **self._forecast())
            if cfg.optimizer == "adamw_lean" and cfg.max_grad_norm > 0:
                self.event("optimizer", f"adamw_lean updates each weight during backward, before the "
                                        f"global gradient norm is known: max_grad_norm {cfg.max_grad_norm} "
                                        f"is not applied (no clipping)")
            # A CPU run that chose memory over speed (checkpointing, adamw_lean) also has glibc
            # give back what it frees (forecast.memory_first, memory.LEAN_MMAP_THRESHOLD).
            returned = memory_first(cfg, "cuda" if torch.cuda.is_available() else "cpu")
            with memory.cpu_blocks_returned_when_freed() if returned else contextlib.nullcontext():
                if torch.cuda.is_available():
                    # what was just let go (a chat model the studio dropped for this run) goes
                    # back to the GPU before the run's measurement starts
                    gc.collect()
                    torch.cuda.empty_cache()
                memory.reset_peak()
                set_seed(cfg.seed)
                model, info = build_model(cfg)
                run.write_status(total_params=info.total_params, trainable_params=info.trainable_params,
                                 precision=info.precision, device=info.device)
                trainer = self._trainer(model)
                self.stopped_early = distributed.any_across(self.stop_requested())
                if self.stopped_early:  # stopped while loading: don't start a step
                    status = Status.STOPPED
                else:
                    trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
                    if trainer.eval_dataset is not None:
                        trainer.evaluate()
                    status = Status.STOPPED if self.stopped_early else Status.COMPLETED
            self._save_result(model, trainer)
            peaks = distributed.gather_values(memory.snapshot()["mem_peak_mib"])  # every process takes part
            self.event(status.value, "what was trained so far is saved" if status == Status.STOPPED
                       else "result saved", _step(trainer))
            if self.main:
                run.write_status(status=status, ended_at=utc_now(), step=_step(trainer), **self._final_stats(),
                                 **({"mem_peak_per_process_mib": peaks} if len(peaks) > 1 else {}))
        except torch.OutOfMemoryError as e:
            self._fail(f"out of memory: {str(e).splitlines()[0]}. Lower batch_size (raise grad_accum to "
                       f"keep the effective batch), lower max_seq_len, turn on activation_checkpointing, "
                       f"or use qlora", trainer)
        except UserError as e:
            self._fail(str(e), trainer)
        except Exception as e:  # a bug or an environment failure: keep the traceback in the log
            tb = hide_tokens(traceback.format_exc())
            if distributed.world_size() > 1 and _peer_lost(e):
                self._fail(f"another process of this run ended before it finished (killed, or crashed; the "
                           f"out-of-memory killer ends a process this way), so this one could not go on: "
                           f"{str(e).splitlines()[0][:200]}. Each process's output is in train.log in the run "
                           f"folder; resume the run from its last checkpoint", trainer, tb=tb)
                return Status.FAILED
            # the text, not exc_info: a log handler that keeps records (pytest's, a buffering one)
            # would keep the traceback's frames alive, and with them the model and its memory
            log.error("run %s failed:\n%s", run.run_id, tb)
            self._fail(f"{type(e).__name__}: {e}", trainer, tb=tb)
        finally:
            # Free the model before returning so a long-lived app gets its memory back.
            del model, trainer
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return Status(run.read_status(reconcile=False)["status"])

    def start(self) -> threading.Thread:
        """Run in a daemon thread (the studio's worker); returns the thread."""
        if self.run_dir is None:
            self.prepare()
        self.thread = threading.Thread(target=self.run, name=f"train-{self.run_dir.run_id}", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """Ask the run to end after the current optimizer step; the result is still saved."""
        self.stop_event.set()

    def stop_requested(self) -> bool:
        """Asked to end after this step: by stop() (a signal, the studio in this process), by the
        stop file in the run directory (the studio's worker, for a run in processes of its own),
        or because the process that started this one is gone. Only rank 0 looks at the files;
        the processes agree on its answer (LeanTrainer.sync_step)."""
        if self.stop_event.is_set():
            return True
        if not self.main or self.run_dir is None:
            return False
        if (self.run_dir.path / STOP_FILE).exists():
            return True
        if self.supervisor is not None and not self.supervisor.is_running():
            if not self.stop_event.is_set():
                self.event("stopping", f"the process that started this run (pid {self.supervisor.pid}) is gone: "
                                       f"the run stops after this step and keeps what it trained; resume it to "
                                       f"go on")
                self.stop_event.set()
            return True
        return False

    def scale(self) -> dict[str, Any]:
        """How the run is spread, for status.json and the studio: processes, strategy and the
        effective batch (rows per optimizer step over all processes)."""
        cfg = self.config
        return {"processes": self.processes, "strategy": cfg.strategy if self.processes > 1 else None,
                "effective_batch": cfg.batch_size * cfg.grad_accum * self.processes}

    def event(self, kind: str, message: str, step: int | None = None) -> None:
        """A human-readable line for the studio's event log (rank 0 writes it; the others
        would only repeat it)."""
        if not self.main:
            return
        self.run_dir.append_event(kind, message, step)

    # --- pieces ------------------------------------------------------------------------------
    def _trainer(self, model) -> LeanTrainer:
        from datasets import Dataset

        cfg, run = self.config, self.run_dir
        train, held_out = select_rows([{"input_ids": r.input_ids, "labels": r.labels} for r in self.encoded.rows], cfg)
        train_ds = Dataset.from_list(train)
        eval_ds = Dataset.from_list(held_out) if held_out else None
        lean = cfg.optimizer == "adamw_lean"
        args = training_arguments(cfg, run, evaluates=eval_ds is not None, processes=self.processes,
                                  layer_class=_decoder_layer_class(model))
        # Padding-free: one lane per batch with flash-attention's variable-length kernel, else
        # lanes no longer than the batch's longest row (packing.py says why).
        # A batch cut into passes (tokens_per_pass) keeps its lanes: a pass is whole lanes.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        budget = pass_budget(cfg.tokens_per_pass, device,
                             step_in_backward=lean)
        collator = PackedBatch(self.tokenizer.pad_token_id,
                               single_lane=model.config._attn_implementation == "flash_attention_2"
                               and budget is None)
        # adamw_lean is built here (the Trainer does not know it); the Trainer still makes the
        # LR schedule for it and saves and restores its state with checkpoints.
        optimizer = AdamWInBackward(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                    seed=cfg.seed) if lean else None
        callback = self.callback = _RunCallback(self)
        trainer = LeanTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              data_collator=collator, processing_class=self.tokenizer,
                              callbacks=[callback], optimizers=(optimizer, None),
                              defer_head_gradient=lean,  # adamw_lean: memory first
                              pass_budget=budget,
                              loss_workspace=LossWorkspace() if keeps_loss_workspace(cfg, device) else None)
        # weakly: the job outlives its trainer, and must not keep it (and the model) alive
        trainer_ref = weakref.ref(trainer)
        callback.paused_s = lambda: getattr(trainer_ref(), "paused_s", 0.0)
        callback.sync = lambda stop: trainer_ref().sync_step(stop)
        trainer.remove_callback(PrinterCallback)  # our callback logs; don't print dicts to stdout
        return trainer

    def _resolve_optimizer(self) -> str:
        """`auto` → the optimizer the memory free now allows (forecast.resolve_optimizer); a
        model the forecast does not know keeps adamw_torch."""
        from .forecast.estimate import resolve_optimizer
        from .forecast.shape import model_shape
        from .hardware import available_memory
        if self.config.optimizer != "auto":
            return self.config.optimizer
        longest, heaviest = self._batch_extent()
        try:
            chosen = resolve_optimizer(self.config, model_shape(self.config.model), available=available_memory(),
                                       seq_len=longest, tokens_per_batch=heaviest,
                                       processes=self.processes)
        except UserError as e:
            log.info("optimizer auto is adamw_torch for run %s: no forecast (%s)", self.run_dir.run_id, e)
            return "adamw_torch"
        if chosen != "adamw_torch":
            self.event("optimizer", f"optimizer auto chose {chosen}: full fine-tuning with fp32 AdamW "
                                    f"would not fit the memory free now")
        return chosen

    def _batch_extent(self) -> tuple[int, int | None]:
        """(the data's longest row, the most tokens one batch can hold): a batch is padding-free,
        so max_seq_len alone would overstate what it costs."""
        lengths = sorted((len(r.input_ids) for r in self.encoded.rows), reverse=True)
        longest = lengths[0] if lengths else self.config.max_seq_len
        return longest, sum(lengths[:self.config.batch_size]) or None

    def _save_result(self, model, trainer=None) -> None:
        """adapter/ (peft format) for LoRA/QLoRA, model/ (safetensors) for full; with tokenizer.
        Written to a temporary folder and renamed, so a half-saved result never looks final.
        Under FSDP every process hands in its shard (the whole state dict is gathered on rank
        0); only rank 0 writes."""
        state_dict = None
        if trainer is not None and getattr(trainer, "is_fsdp_enabled", False):
            state_dict = trainer.accelerator.get_state_dict(trainer.model)  # collective: every process
        if not self.main:
            return
        name = MODEL_DIR if self.config.method == "full" else ADAPTER_DIR
        target = self.run_dir.path / name
        tmp, old = self.run_dir.path / f".{name}.tmp", self.run_dir.path / f".{name}.old"
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash mid-save
        if self.config.method == "full" and getattr(model, "generation_config", None) is not None:
            # a full model is used as it is saved (export copies it): make any generate() stop
            # at the chat template's end of turn, as the studio's chat does
            from .inference import stop_token_ids
            model.generation_config.eos_token_id = stop_token_ids(self.tokenizer, model.generation_config)
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        self.tokenizer.save_pretrained(tmp)
        if target.exists():  # a resumed run replaces the result it saved when it was stopped
            shutil.rmtree(old, ignore_errors=True)
            target.replace(old)
        tmp.replace(target)
        shutil.rmtree(old, ignore_errors=True)

    def _forecast(self) -> dict[str, Any]:
        """The memory forecast for this run, with the data's real longest row and heaviest
        batch (`_batch_extent`). Written to
        status.json and into every metrics row so prediction and measurement sit together.
        A model the forecast does not know (not a Llama-style decoder) trains anyway: the
        reason is recorded instead of a number."""
        from .forecast.estimate import forecast
        from .forecast.shape import model_shape
        longest, heaviest = self._batch_extent()
        try:
            fc = forecast(self.config, model_shape(self.config.model), seq_len=longest,
                          tokens_per_batch=heaviest, processes=self.processes)
        except UserError as e:
            log.info("no memory forecast for run %s: %s", self.run_dir.run_id, e)
            return {"forecast_mib": None, "forecast_error": str(e)}
        self.forecast_mib = round(fc.total_mib, 1)
        return {"forecast_mib": self.forecast_mib, "forecast_needed_mib": round(fc.needed_mib, 1),
                "forecast_device": fc.device, "forecast_seq_len": longest,
                "forecast_tokens_per_batch": fc.details["tokens_per_batch"],
                "forecast_components_mib": fc.mib(), "forecast_peak_phase": fc.peak_phase,
                "forecast_error": None}

    def _final_stats(self) -> dict[str, Any]:
        rows = self.run_dir.read_metrics()
        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval_loss" in r]
        mem = memory.snapshot()
        peak = max([mem["mem_peak_mib"]] + [r.get("mem_peak_mib", 0) for r in rows])
        extra: dict[str, Any] = {}
        if "mem_peak_reserved_mib" in mem:  # CUDA: what the caching allocator held, too
            extra["mem_peak_reserved_mib"] = max([mem["mem_peak_reserved_mib"]]
                                                 + [r.get("mem_peak_reserved_mib", 0) for r in rows])
        if self.forecast_mib:
            extra["forecast_error_pct"] = round(100 * (self.forecast_mib - peak) / peak, 1) if peak else None
        return {**extra,
            "final_loss": train[-1]["loss"] if train else None,
            "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
            "tokens_per_second": self.callback.tokens_per_second() if self.callback else None,
            "train_time_s": round(self.callback.train_s, 3) if self.callback else None,
            "elapsed_s": rows[-1]["elapsed_s"] if rows else None,
            "mem_device": mem["mem_device"],
            "mem_peak_mib": peak,
            "result_dir": str(self.run_dir.result_dir) if self.run_dir.result_dir else None,
        }

    def _fail(self, message: str, trainer, tb: str | None = None) -> None:
        message, tb = hide_tokens(message), hide_tokens(tb)
        if not self.main:  # rank 0 writes the run; this one's failure goes to the log (train.log)
            log.error("process %d of run %s failed: %s", distributed.rank(), self.run_dir.run_id, message)
        self.event("error", message, _step(trainer))
        self.run_dir.write_status(status=Status.FAILED, ended_at=utc_now(), error=message,
                                  step=_step(trainer), **({"traceback": tb} if tb else {}))


def _peer_lost(error: BaseException) -> bool:
    """The error a process of a run of several gets when another one died mid-collective."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(error).lower()
    return isinstance(error, dist_error) or any(w in text for w in ("gloo", "nccl", "connection closed by peer",
                                                                    "connection reset by peer"))


def _decoder_layer_class(model) -> str | None:
    """The class name of the model's decoder layers (LlamaDecoderLayer...), FSDP's unit."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(lm, "model", None), "layers", None)
    return type(layers[0]).__name__ if layers is not None and len(layers) else None


# data.json keeps this many file rows of each side of the split (the held-out rows first): the
# evaluation asks at most evaluate.MAX_QUESTIONS of them, and a 100k-row file would otherwise
# write 100k numbers.
RECORDED_SPLIT_ROWS = 200


def recorded_split(encoded: EncodedData, cfg: RunConfig) -> dict:
    """The file rows held out (`held_out_rows`) and some trained on (`train_rows_in_file`), in
    the split's random order (data.select_rows), for evaluate.py."""
    train, held_out = select_rows([r.row for r in encoded.rows], cfg)
    return {"held_out_rows": held_out[:RECORDED_SPLIT_ROWS], "train_rows_in_file": train[:RECORDED_SPLIT_ROWS]}


def _step(trainer) -> int:
    return trainer.state.global_step if trainer is not None else 0


def train(config: RunConfig, on_job=None) -> tuple[RunDir, Status]:
    """Prepare and run a job in this thread. `on_job(job)` is called once the job exists,
    so a caller (the CLI's signal handler) can stop it."""
    job = TrainingJob(config)
    if on_job:
        on_job(job)
    run_dir = job.prepare()
    return run_dir, job.run()


def train_launched(run_path: str | Path | None, supervisor_pid: int | None = None, on_job=None) -> Status:
    """What each process of a launched run runs (`python -m ft_engine train-run RUN_DIR`, see
    launch.py): the run prepared at `run_path`, trained from its start or, when its status
    names a checkpoint (`resume_from`), from there.

    With several processes, rank 0 reads the run and hands the others its settings (one
    broadcast), so a process on another machine needs only the data file at the same path; it
    trains into a folder of the same name under its runs_dir and writes nothing there
    (FollowerRunDir)."""
    if distributed.world_size() > 1:
        from accelerate import PartialState
        PartialState(cpu=not torch.cuda.is_available())  # the process group, before the broadcast
    shared = None
    if distributed.is_main():
        run = RunDir(Path(run_path))
        status = run.read_status(reconcile=False)
        shared = json.dumps({"name": run.path.name, "config": (run.path / CONFIG_FILE).read_text(encoding="utf-8"),
                             "resume_from": status.get("resume_from")})
    shared = json.loads(distributed.broadcast_text(shared))
    if not distributed.is_main():  # one progress line per step in train.log, rank 0's
        logging.getLogger("ft_engine").setLevel(logging.WARNING)
    import yaml
    config = RunConfig.from_dict(yaml.safe_load(shared["config"]) or {})
    if not distributed.is_main():
        here = Path(run_path) if run_path and Path(run_path).name == shared["name"] else \
            Path(config.runs_dir) / shared["name"]
        here.mkdir(parents=True, exist_ok=True)
        run = FollowerRunDir(here)
    job = TrainingJob(config, run_dir=run)
    if on_job:
        on_job(job)
    if shared["resume_from"]:
        job.resume_from = run.path / CHECKPOINTS_DIR / shared["resume_from"]
        if job.main:
            kept = run.read_metrics()
            job.elapsed_before = kept[-1]["elapsed_s"] if kept else 0.0
    if supervisor_pid is not None:
        import psutil
        try:
            job.supervisor = psutil.Process(supervisor_pid)
        except psutil.NoSuchProcess:
            job.stop()  # gone before this process started: keep nothing running unwatched
    job.prepare()
    return job.run()


def resume_job(run_dir: str | Path | RunDir) -> TrainingJob:
    """A job that continues `run_dir` from its last checkpoint to the planned number of steps.
    Metrics logged after that checkpoint are dropped, since those steps are trained again."""
    run = run_dir if isinstance(run_dir, RunDir) else open_run(run_dir)
    status = run.read_status()
    if status.get("status") == Status.COMPLETED.value:
        raise UserError(f"run {run.run_id} already completed; start a new run to train more")
    if status.get("status") in (Status.RUNNING.value, Status.QUEUED.value):
        raise UserError(f"run {run.run_id} is {status['status']} in another process; stop it first")
    checkpoints = run.checkpoints
    if not checkpoints:
        raise UserError(f"run {run.run_id} has no checkpoint to resume from (checkpoint_steps was "
                        f"{run.read_config().checkpoint_steps}); start a new run")
    last = checkpoints[-1]
    step = int(last.name.split("-")[-1])
    kept = [r for r in run.read_metrics() if r.get("step", 0) <= step]
    atomic_write_text(run.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    config = run.read_config()
    if config.optimizer == "auto" and status.get("optimizer"):
        # the optimizer the run started with: its checkpointed state only loads into the same one
        config = config.replace(optimizer=status["optimizer"])
    job = TrainingJob(config, run_dir=run)
    job.resume_from = last
    job.elapsed_before = kept[-1]["elapsed_s"] if kept else 0.0
    job.prepare()
    job.event("resumed", f"resuming from {last.name}", step)
    return job


def resume(run_dir: str | Path | RunDir, on_job=None) -> tuple[RunDir, Status]:
    job = resume_job(run_dir)
    if on_job:
        on_job(job)
    return job.run_dir, job.run()
