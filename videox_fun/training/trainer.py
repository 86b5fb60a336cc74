"""The generic trainer: accelerate (mixed precision, gradient accumulation, DDP / FSDP / DeepSpeed).

It never looks at a model's name: a family spec (:mod:`videox_fun.training.specs`, chosen by the
model folder's family unless ``--family`` names one) loads the models, turns batches into
transformer inputs and chooses the objective (:mod:`videox_fun.training.objectives`: the
prediction target, noise levels and loss). What the trainer owns is the loop and everything around it:

- data order: one :class:`BucketBatchSampler` over *global* batches (``train_batch_size`` x
  processes); each process takes its slice, so n processes see what one process with an n times
  bigger batch sees, and per-sample randomness is seeded by the position in the global batch;
- LoRA (peft) or full fine-tuning of chosen modules, gradient checkpointing, 8-bit Adam;
- checkpoints every ``checkpointing_steps`` (atomic; trainable weights, optimizer, LR schedule,
  RNG states, data position) and exact resume; final LoRA file or full model folder;
- validation videos every ``validation_steps``; a tqdm bar (loss / lr / it/s); TensorBoard.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .checkpoint import (
    LORA_FILE,
    SETTINGS_KEY,
    TRAIN_YAML,
    TRANSFORMER_DIR,
    check_run_start,
    load_checkpoint,
    load_sharded_state,
    read_training_state,
    register_trainable_hooks,
    remove_stale_temporaries,
    save_checkpoint,
    save_sharded_state,
)
from .config import DEFAULT_DISTILL_PROMPT_SHARE, TrainConfig, run_settings, save_train_yaml
from .data.prompts import load_prompts
from .data.workers import worker_context
from .distill import draw_exit_step, draws_prompts, prompt_batch
from .ema import DEFAULT_EMA_DECAY, EMA_FILE, EMAWeights
from .lora import add_lora, save_lora_file
from .objectives import Objective, objective_loss, training_objective
from .reward import sample_size
from .specs import get_spec, on_device, sample_generators, spec_name

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .cache import CachedLatentDataset
    from .data import BucketBatchSampler, VideoDataset
    from .data.prompts import PromptDataset

logger = logging.getLogger(__name__)


def mixed_precision_dtype(mixed_precision: str | None) -> torch.dtype:
    """The dtype frozen models run in for a mixed-precision setting."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision or "no", torch.float32)


def _no_accelerator() -> bool:
    """True when no GPU-like device exists: processes then talk over gloo on the CPU."""
    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available())


def shard_on_cpu(model: nn.Module) -> None:
    """FSDP2 (``fully_shard``) on each no-split block, then the root, for runs on the CPU.

    accelerate applies FSDP only on accelerators; so that the shipped FSDP config also runs (and
    is tested) on a CPU with gloo, the trainer shards with torch's own API there.
    """
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in names:
            fully_shard(module)
    fully_shard(model)


class ShardedBatches(Sampler[list[int]]):
    """This process's slice of each global batch; a short global batch is filled by repeating its samples."""

    def __init__(self, sampler: Sampler[list[int]], rank: int, world: int, batch_size: int):
        self.sampler, self.rank, self.world, self.batch_size = sampler, rank, world, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        size = self.batch_size * self.world
        for batch in self.sampler:
            full = [batch[i % len(batch)] for i in range(size)]
            yield full[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass
class TrainResult:
    """What a run did: steps, the loss of each step (mean over processes), what it wrote."""

    global_step: int
    losses: list[float] = field(default_factory=list)
    output_dir: Path = Path(".")
    lora_path: Path | None = None
    transformer_dir: Path | None = None
    bad_files: dict[str, str] = field(default_factory=dict)
    # --distill: the student's DMD loss by step (1-based) on the steps it was updated; ``losses`` are the critic's
    generator_losses: dict[int, float] = field(default_factory=dict)


class Trainer:
    """Train the transformer of a model family as the config says. ``Trainer(config).train()``."""

    def __init__(self, config: TrainConfig):
        config.validate()
        if not config.family:  # recorded as resolved, so a resume compares the spec actually used
            config = dataclasses.replace(config, family=spec_name(config))
        self.config = config
        self.spec = get_spec(config)
        self.bad_files: dict[str, str] = {}
        self.generator_losses: dict[int, float] = {}  # --distill: the student's DMD loss on the steps it learns
        self.distill_prompts: list[str] | None = None  # --distill_prompt_path, read at its first prompt batch
        self.ema: EMAWeights | None = None  # --use_ema: the moving average of the trained weights

    # -- set-up ----------------------------------------------------------------------------
    def _accelerator(self) -> Accelerator:
        """An ``Accelerator`` set up from the config (precision, accumulation, logging, CPU when no GPU)."""
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        config = self.config
        log_with = None
        if config.report_to == "tensorboard":
            if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
                log_with = "tensorboard"
            else:
                logger.info(
                    "TensorBoard is not installed (pip install tensorboard): losses go to the progress bar only"
                )
        output = Path(config.output_dir)
        return Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / config.logging_dir)),
            cpu=_no_accelerator(),
            step_scheduler_with_optimizer=False,
            # Full fine-tunes may hold parameters a mode does not use (e.g. ref_conv without a reference).
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=not config.use_lora)],
        )

    def _setup_trainable(self, transformer: nn.Module, weight_dtype: torch.dtype) -> list[nn.Parameter]:
        config = self.config
        if config.use_lora:
            if weight_dtype != torch.float32:
                transformer.to(weight_dtype)  # frozen base in the compute dtype; adapters stay fp32
            targets = config.lora_target_modules or self.spec.lora_target_modules
            names = add_lora(transformer, config.rank, config.network_alpha, targets, config.lora_skip_name)
            logger.info("LoRA rank %d alpha %g on %d modules", config.rank, config.network_alpha, len(names))
        else:
            patterns = config.trainable_modules or [""]
            for name, param in transformer.named_parameters():
                param.requires_grad_(any(p in name for p in patterns))
        params = [p for p in transformer.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"--trainable_modules {config.trainable_modules} matches no parameter of the transformer")
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        return params

    def _optimizer(self, params: list[nn.Parameter], learning_rate: float | None = None) -> torch.optim.Optimizer:
        config = self.config
        optimizer_class = torch.optim.AdamW
        if config.use_8bit_adam:
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError(
                    "--use_8bit_adam needs bitsandbytes (pip install bitsandbytes, CUDA); or drop the flag"
                )
            import bitsandbytes

            optimizer_class = bitsandbytes.optim.AdamW8bit
        return optimizer_class(
            params,
            lr=learning_rate if learning_rate is not None else config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )

    def _data(
        self, rank: int, world: int
    ) -> tuple[VideoDataset | CachedLatentDataset | PromptDataset, BucketBatchSampler, DataLoader]:
        """Dataset, global-batch sampler and this process's loader."""
        from .data import BucketBatchSampler, DataConfig, VideoDataset, collate

        config = self.config
        sampler_class = BucketBatchSampler
        if config.train_mode == "reward":  # prompts only: the videos are sampled in the step
            from .data.prompts import PromptBatchSampler, PromptDataset, collate_prompts

            dataset, collate_fn, sampler_class = PromptDataset(config.prompt_path), collate_prompts, PromptBatchSampler
        elif config.use_cached_latents:
            from .cache import CachedLatentDataset, collate_cached

            dataset, collate_fn = CachedLatentDataset(config.resolved_cache_dir, config), collate_cached
        else:
            dataset, collate_fn = VideoDataset(DataConfig.from_mapping(config.to_dict())), collate
        sampler = sampler_class(dataset, config.train_batch_size * world, seed=config.seed, shuffle=True)
        if len(sampler) == 0:
            raise ValueError(
                f"no usable sample in {config.train_data_meta}: every file is missing or unreadable "
                f"(see the warnings); fix the data or the paths (--train_data_dir)"
            )
        loader = DataLoader(
            dataset,
            batch_sampler=ShardedBatches(sampler, rank, world, config.train_batch_size),
            collate_fn=collate_fn,
            num_workers=config.dataloader_num_workers,
            multiprocessing_context=worker_context(config.dataloader_num_workers),
            persistent_workers=config.dataloader_num_workers > 0,
        )
        return dataset, sampler, loader

    # -- the run -----------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run to ``max_train_steps`` (or ``num_train_epochs``), resuming first when asked."""
        self._setup()
        config, accelerator = self.config, self.accelerator
        step, epoch = self._resume()
        result = TrainResult(global_step=step, output_dir=Path(config.output_dir))
        stream = self._stream(self.loader, self.sampler, epoch)
        # where the data stands before its first batch (a checkpoint after prompt-only --distill batches writes it)
        self.data_state = {**self.sampler.state_dict(), "epoch": epoch}
        progress = tqdm(
            total=self.max_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process
        )
        while step < self.max_steps:
            loss = self._step(stream, step)
            step += 1
            result.losses.append(loss)
            lr = self.lr_scheduler.get_last_lr()[0]
            progress.update(1)
            logged = {"train/loss": loss, "train/lr": lr}
            if step in self.generator_losses:  # --distill: loss is the critic's, this the student's
                logged["train/generator_loss"] = self.generator_losses[step]
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            accelerator.log(logged, step=step)
            if step % config.checkpointing_steps == 0 or step == self.max_steps:
                self._checkpoint(step)
            if config.validation_steps and step % config.validation_steps == 0:
                self.validate(step)
        progress.close()

        result.global_step = step
        result.generator_losses = dict(self.generator_losses)
        self._export(result)
        result.bad_files = {**getattr(self.dataset, "bad_files", {}), **self.bad_files}
        if result.bad_files and accelerator.is_main_process:
            logger.warning("%d data files were skipped as missing or unreadable", len(result.bad_files))
        accelerator.end_training()
        return result

    def _setup(self) -> None:
        """Accelerator, models, trainable parameters, data, optimizer and schedule, objective."""
        from accelerate.utils import set_seed

        config = self.config
        self.resume_folder = check_run_start(config)  # before anything loads or is written
        accelerator = self.accelerator = self._accelerator()
        set_seed(config.seed)
        if accelerator.is_main_process:
            Path(config.output_dir).mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(config.output_dir)  # a killed run's half-saved checkpoint
        self.weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
        if config.use_ema:
            self._refuse_sharding("--use_ema")
        models = self.models = self.spec.load_models(config, self.weight_dtype)
        # Distillation's critic and (full student) teacher start as the model itself, before it is adapted.
        critic, self.teacher = self._distill_copies(models.transformer) if config.distill else (None, None)
        params = self._setup_trainable(models.transformer, self.weight_dtype)
        self.dataset, self.sampler, self.loader = self._data(accelerator.process_index, accelerator.num_processes)
        steps_per_epoch = math.ceil(len(self.sampler) / config.gradient_accumulation_steps)
        self.max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
        self._prepare(params)
        if config.use_ema:
            self.ema = EMAWeights.of_trained(
                accelerator.unwrap_model(self.transformer), config.ema_decay or DEFAULT_EMA_DECAY
            )
        if critic is not None:
            self._prepare_critic(critic)
        register_trainable_hooks(accelerator)
        if not config.low_vram:
            for module in models.frozen.values():
                module.to(accelerator.device)
        self.objective: Objective = training_objective(self.spec, models, config)
        if accelerator.is_main_process:
            self._start_logging()

    def _prepare(self, params: list[nn.Parameter]) -> None:
        """Shard (FSDP on the CPU) or ``accelerator.prepare`` the transformer, with its optimizer and schedule.

        Sets ``params`` (the parameters the optimizer steps), ``transformer``, ``optimizer``,
        ``lr_scheduler``, ``cpu_sharded`` and ``sharded``.
        """
        from accelerate.utils import DistributedType
        from diffusers.optimization import get_scheduler

        config, accelerator, transformer = self.config, self.accelerator, self.models.transformer
        fsdp_requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        self.cpu_sharded = fsdp_requested and accelerator.distributed_type == DistributedType.MULTI_CPU
        if self.cpu_sharded:  # sharding replaces the parameters: the optimizer must see the sharded ones
            shard_on_cpu(transformer)
            params = [p for p in transformer.parameters() if p.requires_grad]
        self.params = params
        optimizer = self._optimizer(params)
        scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=self.max_steps
        )
        if self.cpu_sharded:
            self.transformer, self.optimizer, self.lr_scheduler = transformer, optimizer, scheduler
            accelerator.register_for_checkpointing(scheduler)
        else:
            if accelerator.distributed_type == DistributedType.DEEPSPEED:
                # DeepSpeed reads the micro-batch from a prepared data loader; ours shards global batches itself.
                plugin = accelerator.state.deepspeed_plugin
                plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train_batch_size
            self.transformer, self.optimizer, self.lr_scheduler = accelerator.prepare(transformer, optimizer, scheduler)
        self.sharded = self.cpu_sharded or accelerator.distributed_type in (
            DistributedType.FSDP,
            DistributedType.DEEPSPEED,
        )

    def _distill_copies(self, transformer: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        """(the critic, the frozen teacher) for ``--distill``, copies of the loaded model; a LoRA student's
        teacher is the student with its adapters off (None here: no third copy)."""
        import copy

        self._refuse_sharding("--distill")
        teacher = None
        if not self.config.use_lora:
            teacher = copy.deepcopy(transformer).requires_grad_(False).eval()
            if not self.config.low_vram:
                teacher.to(self.accelerator.device)
        return copy.deepcopy(transformer), teacher

    def _refuse_sharding(self, flag: str) -> None:
        """One line when the run would shard the model (FSDP / DeepSpeed), which ``flag`` does not support."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) or (
            os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        ):
            raise ValueError(f"{flag} runs on one process or under DDP; FSDP / DeepSpeed sharding is not supported")

    def _prepare_critic(self, critic: nn.Module) -> None:
        """The critic trained as the student is (LoRA or the same modules), with its own optimizer, learning
        rate (``--critic_learning_rate``) and schedule; prepared with the rest, so checkpoints hold it."""
        from diffusers.optimization import get_scheduler

        config, accelerator = self.config, self.accelerator
        self.critic_params = self._setup_trainable(critic, self.weight_dtype)
        optimizer = self._optimizer(self.critic_params, config.critic_learning_rate or config.learning_rate)
        scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=self.max_steps
        )
        self.critic, self.critic_optimizer, self.critic_lr_scheduler = accelerator.prepare(critic, optimizer, scheduler)

    def _start_logging(self) -> None:
        """Main process: write the run's settings, start the trackers and log what is trained on what."""
        config, accelerator = self.config, self.accelerator
        self._record_settings()
        tracked = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("videox_fun", config=tracked)
        logger.info(
            "training %s: %d trainable parameters, %d samples, global batch %d, %d accumulation, %d steps",
            config.train_mode,
            sum(p.numel() for p in self.params),
            len(self.dataset),
            config.train_batch_size * accelerator.num_processes,
            config.gradient_accumulation_steps,
            self.max_steps,
        )

    def _record_settings(self) -> None:
        """Write OUTPUT_DIR/train_config.yaml once the run's inputs loaded.

        A new run writes it; a resume whose settings were checked against the checkpoint writes the
        merged truth (the same run-defining settings, the new length / logging / validation ones);
        a resume from a checkpoint without that record leaves the run's own file as it is.
        """
        path = Path(self.config.output_dir) / TRAIN_YAML
        checked = self.resume_folder is None or SETTINGS_KEY in read_training_state(self.resume_folder)
        if checked or not path.is_file():
            save_train_yaml(self.config, path)

    def _resume(self) -> tuple[int, int]:
        """Restore the checkpoint :func:`check_run_start` chose; returns (step, epoch) to continue from."""
        folder = self.resume_folder
        if folder is None:
            return 0, 0
        state = load_checkpoint(self.accelerator, folder, self._read_extra)
        self.sampler.load_state_dict(state["sampler"])
        logger.info("resumed from %s at step %d", folder, state["step"])
        return state["step"], state["sampler"]["epoch"]

    def _step(self, stream: Iterator[dict], step: int) -> float:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; the loss averaged over processes."""
        if self.config.distill:
            return self._distill_step(stream, step)
        config, accelerator, spec, objective = self.config, self.accelerator, self.spec, self.objective
        device = accelerator.device
        first = accelerator.process_index * config.train_batch_size  # this slice's place in the global batch
        losses = []
        for micro in range(config.gradient_accumulation_steps):
            batch = next(stream)
            positions = range(first, first + len(batch["index"]))
            generators = sample_generators(config.seed, step, micro, positions)
            with accelerator.accumulate(self.transformer):
                loss = objective_loss(
                    spec,
                    self.models,
                    self.transformer,
                    objective,
                    batch,
                    config.train_mode,
                    generators,
                    device,
                    autocast=accelerator.autocast,
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    self._student_step()
            losses.append(loss.detach())
        self.lr_scheduler.step()
        return accelerator.gather(torch.stack(losses).mean()[None]).mean().item()

    def _optimizer_step(self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        """Clip (``max_grad_norm``), step and clear the gradients of one trained model."""
        if self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _student_step(self) -> None:
        """The trained model's optimizer step, then its moving average (``--use_ema``)."""
        self._optimizer_step(self.params, self.optimizer)
        if self.ema is not None:
            self.ema.update()

    def _averaged(self) -> AbstractContextManager:
        """The moving average in the trained weights while the block runs (``--use_ema``; else nothing changes)."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    def _distill_step(self, stream: Iterator[dict], step: int) -> float:
        """One DMD step (:mod:`videox_fun.training.distill`): the critic learns every step, the student every
        ``generator_update_ratio``-th; returns the critic's loss (the student's goes to ``self.generator_losses``)."""
        config, accelerator, objective = self.config, self.accelerator, self.objective
        first = accelerator.process_index * config.train_batch_size
        update_generator = objective.updates_generator(step)
        losses: dict[str, list[torch.Tensor]] = {"critic": [], "generator": []}
        for micro in range(config.gradient_accumulation_steps):
            batch = self._distill_batch(stream, step, micro, first)
            positions = range(first, first + len(batch["index"]))
            generators = sample_generators(config.seed, step, micro, positions)
            exit_step = draw_exit_step(config.seed, step, micro, objective.num_steps)
            regression = objective.regression_batch(config.seed, step, micro, positions) if update_generator else None
            with accelerator.accumulate(self.transformer, self.critic):
                parts = objective.batch_losses(
                    self.spec, self.models, self.transformer, self.critic, self.teacher, batch, config.train_mode,
                    generators, accelerator.device, exit_step, update_generator, autocast=accelerator.autocast,
                    regression=regression,
                )  # fmt: skip
                accelerator.backward(sum(parts.values()))
                if accelerator.sync_gradients:
                    self._optimizer_step(self.critic_params, self.critic_optimizer)
                    if update_generator:
                        self._student_step()
            for name, loss in parts.items():
                losses[name].append(loss.detach())
        self.lr_scheduler.step()
        self.critic_lr_scheduler.step()
        means = {name: accelerator.gather(torch.stack(v).mean()[None]).mean().item() for name, v in losses.items() if v}
        if "generator" in means:
            self.generator_losses[step + 1] = means["generator"]
        return means["critic"]

    def _distill_batch(self, stream: Iterator[dict], step: int, micro: int, first: int) -> dict:
        """The next data batch, or (``--distill_prompt_share`` of the micro-batches, drawn) a batch of prompts from
        ``--distill_prompt_path`` alone; the data stream does not advance for a prompt batch."""
        config = self.config
        if config.distill_prompt_path is None:
            return next(stream)
        share = config.distill_prompt_share or DEFAULT_DISTILL_PROMPT_SHARE
        if not draws_prompts(config.seed, step, micro, share):
            return next(stream)
        if self.distill_prompts is None:
            self.distill_prompts = load_prompts(config.distill_prompt_path)
        positions = range(first, first + config.train_batch_size)
        return prompt_batch(self.distill_prompts, config.seed, step, micro, positions, sample_size(config))

    def _stream(self, loader: DataLoader, sampler: BucketBatchSampler, epoch: int) -> Iterator[dict]:
        """Batches forever, epoch after epoch; keeps ``self.data_state`` at the batches trained on."""
        while True:
            sampler.set_epoch(epoch)
            done = sampler.position
            got_any = False
            for batch in loader:
                got_any = True
                done += 1
                self.data_state = {**sampler.state_dict(batches_done=done), "epoch": epoch}
                self.bad_files.update(batch.get("bad_files") or {})
                yield batch
            if not got_any and done == 0:
                raise ValueError("the data loader yields no batch: the dataset is empty")
            epoch += 1

    # -- checkpoints and outputs -------------------------------------------------------------
    def _read_extra(self, folder: Path) -> None:
        if self.cpu_sharded:
            load_sharded_state(self.transformer, self.optimizer, folder)
        if self.ema is not None:
            self.ema.load(folder / EMA_FILE)

    def _checkpoint(self, step: int) -> None:
        """Write ``checkpoint-<step>`` (plus the LoRA file so far, for LoRA runs)."""
        accelerator, config = self.accelerator, self.config

        def write_extra(folder: Path) -> None:
            if self.cpu_sharded:
                save_sharded_state(self.transformer, self.optimizer, folder, accelerator.is_main_process)
            if config.use_lora:
                state = self._full_state()
                if accelerator.is_main_process:
                    self._save_lora(state, folder / LORA_FILE)
            if self.ema is not None and accelerator.is_main_process:
                self.ema.save(folder / EMA_FILE)

        state = {"sampler": self.data_state, SETTINGS_KEY: run_settings(config)}
        save_checkpoint(accelerator, config.output_dir, step, state, write_extra, config.checkpoints_total_limit)

    def _full_state(self) -> dict[str, torch.Tensor]:
        """The whole model state on the main process (collective when sharded)."""
        if self.cpu_sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(self.transformer, options=options)
        return self.accelerator.get_state_dict(self.transformer)

    def _save_lora(self, state: dict[str, torch.Tensor], path: Path) -> Path:
        """The LoRA file in the family's layout (the spec's ``save_lora``), else the shared Wan-keyed one."""
        save = getattr(self.spec, "save_lora", save_lora_file)
        return save(state, path, self.config.rank, self.config.network_alpha)

    def _export(self, result: TrainResult) -> None:
        """Final LoRA file or full model folder (the family's release layout); the moving average with ``--use_ema``."""
        accelerator, config = self.accelerator, self.config
        accelerator.wait_for_everyone()
        with self._averaged():
            state = self._full_state()
            if self.ema is not None:  # its tensors may be the parameters themselves, restored after the block
                state = {name: t.detach().clone() for name, t in state.items()}
        if accelerator.is_main_process:
            output_dir = Path(config.output_dir)
            if config.use_lora:
                result.lora_path = self._save_lora(state, output_dir / LORA_FILE)
            else:
                result.transformer_dir = output_dir / TRANSFORMER_DIR
                self.spec.save_full(accelerator.unwrap_model(self.transformer), state, result.transformer_dir)
            averaged = " (the moving average of the weights)" if self.ema is not None else ""
            logger.info("wrote %s%s", result.lora_path or result.transformer_dir, averaged)
        accelerator.wait_for_everyone()

    # -- validation ----------------------------------------------------------------------------
    def validate(self, step: int) -> list[Path]:
        """Sample the validation prompts with the model as it is now; videos go to OUTPUT_DIR/samples.

        A sharded model samples on every process together (rank 0 writes); otherwise rank 0 alone.
        """
        from ..io.video import write_video

        accelerator, config, models = self.accelerator, self.config, self.models
        written: list[Path] = []
        if self.sharded or accelerator.is_main_process:
            transformer = accelerator.unwrap_model(self.transformer)
            transformer.eval()
            with ExitStack() as stack, torch.no_grad(), self._averaged():
                for module in models.frozen.values():
                    stack.enter_context(on_device(module, accelerator.device, models.low_vram))
                stack.enter_context(accelerator.autocast())
                for i, prompt in enumerate(config.validation_prompts or []):
                    frames, fps = self.spec.sample(models, transformer, prompt, config.seed + i, accelerator.device)
                    if accelerator.is_main_process:
                        path = Path(config.output_dir) / "samples" / f"step-{step:06d}-{i:02d}.mp4"
                        written.append(write_video(frames, path, fps=fps))
            transformer.train()
        if written:
            logger.info("validation samples: %s", ", ".join(str(p) for p in written))
        accelerator.wait_for_everyone()
        return written


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says (the entry point of the scripts and ``videox-fun train``)."""
    return Trainer(config).train()
