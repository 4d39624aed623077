"""The training loop: AdamW, warmup + linear/cosine decay, grad accumulation, autocast, clipping,
checkpoints with optimizer/scheduler/data position, resume, JSONL metrics, periodic evaluation, DDP.

Output directory:
  OUT/train_config.json               the arguments of the first run
  OUT/metrics.jsonl                   one line per logged step (and per evaluation)
  OUT/checkpoints/step-00000100/      save_pretrained model (or LoRA adapter) + processor,
                                      trainer_state.pt (optimizer, scheduler, scaler, RNG), data_state.json
  OUT/eval/step-00000100.json         evaluation reports (with _examples/ folders)
  OUT/final/                          the final model + processor (LoRA: merged into the base weights;
                                      the adapter alone is in OUT/final-adapter/)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

FULL_LR = 1e-6    # as in the public Florence-2 fine-tunes
LORA_LR = 1e-4
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
DATA_STATE_FILE = "data_state.json"


@dataclass
class TrainConfig:
    model: str
    shards: list[str]
    out: str
    mix: str | None = None
    split: str = "train"                # which splits of --shards to train on (see data.parse_splits)
    eval_split: str = "-train"          # and of --eval-shards to evaluate on
    exclude_holdout: bool = True        # skip images listed in the builds' holdout_image_ids.txt
    image_root: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float = 0.01
    warmup: float = 0.0                 # steps, or a fraction of all steps when < 1
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    freeze_vision: bool = False
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    save_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0
    eval_shards: list[str] = field(default_factory=list)
    eval_max_samples: int = 200
    eval_batch_size: int = 8
    eval_num_beams: int = 3
    eval_max_new_tokens: int = 256
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    num_workers: int = 2
    shuffle_buffer: int = 1000
    max_target_length: int = 1024
    log_every: int = 10
    progress: bool = True
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    report_to: str = "none"             # or "tensorboard": OUT/tensorboard event files

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return LORA_LR if self.lora else FULL_LR


# ---------------------------------------------------------------- distributed helpers

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain `groundforge train` is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        # NCCL collectives (barrier, all_gather_object) run on the current device: without this every
        # rank would use GPU 0
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather(obj, d: Dist) -> list:
    if d.world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------- steps and schedule

def plan_steps(cfg: TrainConfig, rows: int, world_size: int) -> int:
    """--steps, or --epochs worth of optimizer steps over `rows` rows (default: 1 epoch)."""
    if cfg.steps is not None:
        return cfg.steps
    per_step = cfg.batch_size * cfg.grad_accum * world_size
    return max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 1.0) * rows / per_step))


def warmup_steps(warmup: float, total: int) -> int:
    return int(round(warmup * total)) if 0 < warmup < 1 else int(warmup)


def make_scheduler(optimizer, schedule: str, warmup: int, total: int):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    raise ValueError(f"--schedule must be linear or cosine, got {schedule!r}")


# ---------------------------------------------------------------- checkpoints

def checkpoint_dir(out: str, step: int) -> str:
    return os.path.join(out, CHECKPOINTS, f"step-{step:08d}")


def latest_checkpoint(out: str) -> str | None:
    root = os.path.join(out, CHECKPOINTS)
    if not os.path.isdir(root):
        return None
    done = sorted(d for d in os.listdir(root)
                  if d.startswith("step-") and not d.endswith(".tmp")
                  and os.path.isfile(os.path.join(root, d, STATE_FILE)))
    return os.path.join(root, done[-1]) if done else None


def units_digest(sources) -> str:
    h = hashlib.sha256()
    for name in sorted(sources):
        for u in sources[name]:
            h.update(f"{name}\x1f{u.file}\x1f{u.row_group}\x1f{u.rows}\n".encode())
    return h.hexdigest()[:16]


def rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, *, model, processor, trainer_state: dict, data_state: dict) -> None:
    """Write into `path`.tmp, then rename: a checkpoint directory is complete or absent."""
    import torch

    from groundforge.train.model import save

    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, processor, tmp)
    torch.save(trainer_state, os.path.join(tmp, STATE_FILE))
    with open(os.path.join(tmp, DATA_STATE_FILE), "w") as f:
        json.dump(data_state, f, indent=2, sort_keys=True)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def prune_stale_tmp(out: str) -> list[str]:
    """Remove `step-N.tmp` folders left by a save that was killed; returns their names."""
    root = os.path.join(out, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    stale = sorted(d for d in os.listdir(root) if d.startswith("step-") and d.endswith(".tmp"))
    for d in stale:
        log.warning("removing %s, left by an interrupted checkpoint save", os.path.join(root, d))
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    return stale


def prune_checkpoints(out: str, keep: int) -> None:
    root = os.path.join(out, CHECKPOINTS)
    if keep <= 0 or not os.path.isdir(root):
        return
    done = sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp"))
    for d in done[:-keep]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


# ---------------------------------------------------------------- optimizer

NO_DECAY_NAME = re.compile(r"(^|\.)bias$|norm", re.IGNORECASE)


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weights, none on biases and normalization parameters.

    As transformers' Trainer (trainer_pt_utils.get_parameter_names / Trainer.get_decay_parameter_names):
    a parameter is exempt when it belongs to a normalization module (LayerNorm, RMSNorm, GroupNorm, ...,
    recognised by class name) or its name is a bias or mentions a norm."""
    no_decay = set()
    for mname, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if is_norm or NO_DECAY_NAME.search(full):
                no_decay.add(full)
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if name in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


# ---------------------------------------------------------------- metrics log

class MetricsLog:
    """Append-only JSONL. Lines past `start_step` (a lost run's, after the checkpoint resumed from; or all
    of them on a fresh start) are dropped when it opens."""

    def __init__(self, path: str, enabled: bool, start_step: int = 0):
        self.path = path
        self.enabled = enabled
        if enabled and os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if _step_of(line) <= start_step]
            with open(path, "w") as f:
                f.writelines(kept)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")


def _step_of(line: str) -> float:
    """The step of a metrics line; inf (dropped) for a blank line or one cut short by a killed run."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return float("inf")


def batch_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- the loop

class DataPosition:
    """Where each loader slot of this rank stands, and which worker hands out the next batch.

    `commit()` after every optimizer step snapshots the position (and the RNG) a checkpoint records, so a
    run interrupted between micro-batches resumes at the start of the unfinished step.
    """

    def __init__(self, positions: dict[int, int], next_worker: int, num_workers: int):
        self.positions = dict(positions)
        self.next_worker = next_worker
        self.num_workers = max(1, num_workers)
        self.committed: dict = {}
        self.commit()

    def update(self, batch: dict) -> None:
        self.positions[batch["slot"]] = batch["pos"]
        self.next_worker = (batch["slot"] % self.num_workers + 1) % self.num_workers

    def commit(self) -> None:
        self.committed = {"positions": dict(self.positions), "next_worker": self.next_worker, "rng": rng_state()}


def label_tokens(inputs: dict) -> int:
    from groundforge.train.collate import IGNORE_INDEX

    return int((inputs["labels"] != IGNORE_INDEX).sum())


def _all_reduce_sum(value, device, world_size: int):
    """Sum of a number (or a 0-d tensor) over ranks; a plain number comes back as a float."""
    if world_size == 1:
        return value
    import torch
    import torch.distributed as dist

    t = value.clone() if torch.is_tensor(value) else torch.tensor(float(value), device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return t if torch.is_tensor(value) else t.item()


def train_step(net, micro_batches: list[dict], *, optimizer, scaler, params, device, amp_dtype=None,
               max_grad_norm: float = 1.0, world_size: int = 1):
    """One optimizer step over `micro_batches` (gradient accumulation); returns (loss, grad_norm) tensors.

    The model's loss is a mean over the label tokens of its micro-batch. Each micro-batch is weighted by its
    share of the step's label tokens on all ranks (times world_size, as DDP averages gradients over ranks),
    so the gradient is that of the token mean over the whole step: `--batch-size B --grad-accum K` on R
    ranks equals one batch of B*K*R, whatever the target lengths (a plain `loss / K` would over-weight the
    tokens of short micro-batches). Counting needs the step's micro-batches up front, so they are all
    fetched (to host memory) before the first forward, as transformers' Trainer does for the same reason.
    Gradients are unscaled (fp16 GradScaler) before they are clipped.
    The returned loss is that token mean, the same on every rank; grad_norm is before clipping.
    """
    import torch

    counts = [label_tokens(mb) for mb in micro_batches]
    total = max(1.0, _all_reduce_sum(sum(counts), device, world_size))
    loss_sum = torch.zeros((), device=device)
    for k, (inputs, count) in enumerate(zip(micro_batches, counts)):
        inputs = {name: v.to(device, non_blocking=True) for name, v in inputs.items()}
        last = k == len(micro_batches) - 1
        with (contextlib.nullcontext() if last or world_size == 1 else net.no_sync()):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = net(**inputs).loss * (count / total)
            scaler.scale(loss * world_size).backward()
        loss_sum += loss.detach().float()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    scaler.step(optimizer)   # skipped by the scaler when fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return _all_reduce_sum(loss_sum, device, world_size), grad_norm


def _load_sources(cfg: TrainConfig):
    from groundforge.train.data import check_mix, discover, list_units, parse_mix

    sources = list_units(discover(cfg.shards, cfg.split))
    weights = parse_mix(cfg.mix) if cfg.mix else None
    check_mix(weights, sources)
    return sources, weights


def _files(sources) -> list[str]:
    return sorted({u.file for units in sources.values() for u in units})


def data_checks(cfg: TrainConfig, sources, eval_sources, main: bool) -> tuple[frozenset, dict]:
    """Images to leave out of training (holdout_image_ids.txt of the builds of --shards and --eval-shards),
    and, on the main rank, the image overlap between the train and eval shards (by image_sha256)."""
    from groundforge.train.data import holdout_ids, image_overlap

    train_files = _files(sources)
    eval_files = _files(eval_sources) if eval_sources else []
    report: dict = {}
    ids: set = set()
    if cfg.exclude_holdout:
        ids, found = holdout_ids(train_files + eval_files)
        if found:
            report["holdout_files"] = len(found)
            report["holdout_image_ids"] = len(ids)
            if main:
                log.info("leaving out of training the %d images listed in %s", len(ids), ", ".join(found))
    if main and eval_files:
        overlap = image_overlap(train_files, eval_files)
        report["overlap"] = overlap
        if overlap["shared_images"]:
            log.warning("%d of the %d eval images are in the train shards too (%d train rows, by image_sha256): "
                        "the eval score is not a held-out score", overlap["shared_images"],
                        overlap["eval_images"], overlap["train_rows_with_eval_images"])
    return frozenset(ids), report


def _check_slots(sources, world_size: int, workers: int) -> None:
    n_units = sum(len(u) for u in sources.values())
    if n_units < world_size:
        raise ValueError(f"{n_units} row groups cannot feed {world_size} ranks; write more, smaller shards")
    if n_units < world_size * workers:
        log.warning("%d row groups for %d loader slots: %d workers will idle", n_units, world_size * workers,
                    world_size * workers - n_units)


def _resume_dir(cfg: TrainConfig) -> str | None:
    latest = latest_checkpoint(cfg.out)
    if not cfg.resume:
        if latest:
            raise ValueError(f"{cfg.out} already holds checkpoints: pass --resume to continue that run, "
                             f"or choose a new --out")
        return None
    if latest is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", cfg.out)
    return latest


def _build_model(cfg: TrainConfig, resume_dir: str | None, family):
    from groundforge.train.model import apply_lora, freeze_vision, is_adapter_dir, load_model, load_processor

    if resume_dir and is_adapter_dir(resume_dir) != cfg.lora:
        held = "a full model; drop --lora" if cfg.lora else "a LoRA adapter; pass --lora"
        raise ValueError(f"--resume: {resume_dir} holds {held}")
    if resume_dir:
        # a LoRA checkpoint is an adapter directory: its base model is loaded under the trainable adapter
        model = load_model(resume_dir, cfg.trust_remote_code, adapter_trainable=True)
    else:
        model = load_model(cfg.model, cfg.trust_remote_code)
        if cfg.lora:
            model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, family.lora_targets)
    if cfg.freeze_vision:
        freeze_vision(model)
    processor = load_processor(resume_dir or cfg.model, cfg.trust_remote_code, family)
    return model, processor


DATA_KEYS = ("n_slots", "num_workers", "world_size", "batch_size", "seed", "units", "mix", "shuffle_buffer",
             "holdout")
OPTIM_KEYS = ("lr", "weight_decay", "warmup_steps", "schedule", "total_steps", "grad_accum", "max_grad_norm",
              "freeze_vision", "lora_r", "lora_alpha", "lora_dropout")


def optimisation_settings(cfg: TrainConfig, total_steps: int) -> dict:
    """What the optimizer and scheduler state restored on --resume was built with."""
    lora = {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout} if cfg.lora \
        else {"lora_r": None, "lora_alpha": None, "lora_dropout": None}
    return {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay,
            "warmup_steps": warmup_steps(cfg.warmup, total_steps), "schedule": cfg.schedule,
            "total_steps": total_steps, "grad_accum": cfg.grad_accum, "max_grad_norm": cfg.max_grad_norm,
            "freeze_vision": cfg.freeze_vision, **lora}


def _check_resume(saved: dict, current: dict) -> None:
    """--resume continues the interrupted run exactly, or refuses: a changed --lr would be silently
    overridden by the restored scheduler, and --steps/--schedule/--warmup would bend the schedule mid-run.
    (Checkpoints written before a key was recorded are not checked on that key.)"""
    problems = []
    for keys, what in ((DATA_KEYS, "data settings (same shards, --mix, --batch-size, --num-workers, --seed, "
                                   "--shuffle-buffer, world size)"),
                       (OPTIM_KEYS, "optimisation settings (--lr, --weight-decay, --warmup, --schedule, "
                                    "--steps/--epochs, --grad-accum, --max-grad-norm, --freeze-vision, --lora-*)")):
        diff = {k: (saved.get(k), current.get(k)) for k in keys
                if k in saved and saved.get(k) != current.get(k)}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            problems.append(f"the {what} of the interrupted run: {detail}")
    if problems:
        raise ValueError("--resume needs " + "; and ".join(problems) + ". To change them, start a new --out "
                         "from the checkpoint's weights (--model OUT/checkpoints/step-N)")


class Interrupted(Exception):
    """Training stopped at a step boundary on SIGTERM/SIGINT, after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "nothing new to save"
        super().__init__(f"stopped by {name} after step {step} ({where}); continue with --resume")


class StopFlag:
    """SIGTERM and SIGINT set a flag that the loop checks at step boundaries (agreed across ranks).

    Raising from the handler (as KeyboardInterrupt) would land anywhere: inside save_pretrained, inside a
    collective, or between optimizer.step() and the step counter (saving step N+1 weights labelled N).
    A second SIGINT (Ctrl-C twice) still raises at once, without saving.
    """

    def __init__(self):
        self.signum = 0

    def handler(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    @contextlib.contextmanager
    def installed(self):
        old = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self.handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: a SIGTERM or Ctrl-C sent to the whole process group (timeout, Slurm,
    `kill -TERM -PGID`, torchrun) must not kill the loader workers while the main process saves."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def agree_stop(signum: int, device, world_size: int) -> int:
    """The stop signal if any rank got one (0 if none): every rank stops at the same step."""
    if world_size == 1:
        return signum
    import torch
    import torch.distributed as dist

    t = torch.tensor([signum], device=device, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class _Window:
    """Loss and throughput since the last metrics line."""

    def __init__(self):
        self.loss, self.steps, self.samples, self.t0 = 0.0, 0, 0, time.time()

    def add(self, loss: float, samples: int) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples

    def record(self, step: int, lr: float, grad_norm, ids: list[str]) -> dict:
        elapsed = max(1e-9, time.time() - self.t0)
        return {"step": step, "loss": self.loss / max(1, self.steps), "lr": lr, "grad_norm": float(grad_norm),
                "samples_per_s": self.samples / elapsed, "batch_digest": batch_digest(ids),
                "time": round(time.time(), 3)}


def train(cfg: TrainConfig, on_step=None) -> dict:
    """Run training; returns a summary. `on_step(step, info)` is called after every optimizer step with
    info = {"loss", "lr", "grad_norm", "ids"} (ids: the record ids of that step, in order) -- used by tests."""
    with _quiet_transformers_bars():
        return Trainer(cfg).run(on_step)


class Trainer:
    """One training run: set up (or restore) model, optimizer, scheduler and data position, then `run()`."""

    def __init__(self, cfg: TrainConfig):
        import torch

        from groundforge.train.data import total_rows
        from groundforge.train.model import count_parameters, resolve_amp_dtype, resolve_device

        self.cfg = cfg
        self.d = d = init_distributed()
        self.device = resolve_device(cfg.device, d.local_rank)
        self.amp_dtype = resolve_amp_dtype(cfg.dtype, self.device)
        os.makedirs(cfg.out, exist_ok=True)
        torch.manual_seed(cfg.seed)

        from groundforge.train.data import check_shard_formats
        from groundforge.train.families import detect

        self.family = detect(cfg.model, cfg.trust_remote_code)
        self.sources, self.weights = _load_sources(cfg)
        check_shard_formats(_files(self.sources), self.family)
        self.do_eval = bool(cfg.eval_every and cfg.eval_shards)
        self.eval_sources = _eval_sources(cfg) if self.do_eval else None
        self.holdout, self.checks = data_checks(cfg, self.sources, self.eval_sources, d.main)
        self.rows = total_rows(self.sources)
        if self.rows == 0:
            raise ValueError("the shards hold no rows")
        self.workers = max(1, cfg.num_workers)
        _check_slots(self.sources, d.world_size, self.workers)
        self.total_steps = plan_steps(cfg, self.rows, d.world_size)
        if d.main:
            prune_stale_tmp(cfg.out)
        barrier(d)
        self.resume_dir = _resume_dir(cfg)
        self.data_settings = {"n_slots": d.world_size * self.workers, "num_workers": self.workers,
                              "world_size": d.world_size, "batch_size": cfg.batch_size, "seed": cfg.seed,
                              "units": units_digest(self.sources), "mix": self.weights,
                              "shuffle_buffer": cfg.shuffle_buffer,
                              "holdout": hashlib.sha256("\n".join(sorted(self.holdout)).encode()).hexdigest()[:16]}
        self.optim_settings = optimisation_settings(cfg, self.total_steps)

        self.model, self.processor = _build_model(cfg, self.resume_dir, self.family)
        self.model.to(self.device)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable_params, self.total_params = count_parameters(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.learning_rate)
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, warmup_steps(cfg.warmup, self.total_steps),
                                        self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.step = 0
        self.position = DataPosition({}, 0, self.workers)
        self.skipped: Counter = Counter()
        self.truncated: Counter = Counter()
        self._warn_skipped_at = 1
        if self.resume_dir:
            self._restore(self.resume_dir)

    def _restore(self, path: str) -> None:
        import torch

        with open(os.path.join(path, DATA_STATE_FILE)) as f:
            data_state = json.load(f)
        _check_resume(data_state, {**self.data_settings, **self.optim_settings})
        state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        mine = data_state["ranks"][self.d.rank]
        self.position = DataPosition({int(k): v for k, v in mine["positions"].items()}, mine["next_worker"],
                                     self.workers)
        set_rng_state(state["rng"][min(self.d.rank, len(state["rng"]) - 1)])
        self.position.commit()

    # ------------------------------------------------------------------ running
    def run(self, on_step=None) -> dict:
        cfg, d = self.cfg, self.d
        self._announce()
        net = self._ddp()
        self.metrics_log = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), d.main, self.step)
        self.board = _summary_writer(cfg) if d.main else None
        self.started = time.time()
        stop = StopFlag()
        with _quiet_transformers_bars():
            with stop.installed():
                batches = iter(self._loader())     # workers start with the stop handler, then ignore signals
                bar = _progress(cfg, d, self.step, self.total_steps)
                try:
                    with _logs_above(bar):
                        self._loop(net, batches, bar, stop, on_step)
                finally:
                    if bar is not None:
                        bar.close()
            try:
                if self.saved_at != self.step:
                    self.checkpoint()
                return self._finish()
            finally:
                if self.board is not None:
                    self.board.close()

    def _loop(self, net, batches, bar, stop: StopFlag, on_step) -> None:
        cfg, d = self.cfg, self.d
        window = _Window()
        self.saved_at = self.step
        self.last_loss = None
        self._in_step = False
        try:
            while self.step < self.total_steps:
                micro = [self._next_batch(batches) for _ in range(cfg.grad_accum)]
                # the step boundary: position and RNG are committed, no batch of this step is used yet
                signum = agree_stop(stop.signum, self.device, d.world_size)
                if signum:
                    self._stop(signum)
                self._in_step = True
                loss, grad_norm = train_step(
                    net, [b["inputs"] for b in micro], optimizer=self.optimizer, scaler=self.scaler,
                    params=self.params, device=self.device, amp_dtype=self.amp_dtype,
                    max_grad_norm=cfg.max_grad_norm, world_size=d.world_size)
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                self.step += 1
                self.position.commit()
                self._in_step = False
                for b in micro:
                    self.truncated.update(b.get("truncated", {}))
                ids = [i for b in micro for i in b["ids"]]
                loss = self.last_loss = loss.item()
                window.add(loss, len(ids) * d.world_size)
                if bar is not None:
                    bar.update(1)
                if self.step % max(1, cfg.log_every) == 0 or self.step == self.total_steps:
                    self._log(window.record(self.step, lr, grad_norm, ids), bar)
                    window = _Window()
                if on_step is not None:
                    on_step(self.step, {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "ids": ids})
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.checkpoint()
                    self.saved_at = self.step
                if self.do_eval and self.step % cfg.eval_every == 0:
                    self._evaluate()
        except KeyboardInterrupt:
            # a second Ctrl-C, or one raised by code run at the step boundary (on_step): save only when the
            # weights match the step counter and no other rank could be waiting in a collective
            if self._in_step or d.world_size > 1:
                log.warning("interrupted inside step %d: not saving (last checkpoint: step %d)", self.step + 1,
                            self.saved_at)
            elif self.step > self.saved_at:
                log.warning("interrupted at step %d: saving a checkpoint to resume from", self.step)
                self.checkpoint()
            raise

    def _stop(self, signum: int) -> None:
        path = None
        if self.step > self.saved_at:
            if self.d.main:
                log.warning("%s: saving step %d before stopping", signal.Signals(signum).name, self.step)
            self.checkpoint()
            self.saved_at = self.step
            path = checkpoint_dir(self.cfg.out, self.step)
        raise Interrupted(signum, self.step, path)

    def _announce(self) -> None:
        if not self.d.main:
            return
        if not self.resume_dir:
            with open(os.path.join(self.cfg.out, "train_config.json"), "w") as f:
                json.dump(asdict(self.cfg), f, indent=2, sort_keys=True)
        log.info("training %s: %d/%d parameters trainable, %d rows, %d steps%s", self.cfg.model,
                 self.trainable_params, self.total_params, self.rows, self.total_steps,
                 f", resuming at step {self.step} from {self.resume_dir}" if self.resume_dir else "")

    def _ddp(self):
        if self.d.world_size == 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    def _loader(self):
        """Endless shuffled stream for this rank, starting at the saved position of each of its slots."""
        import torch
        from torch.utils.data import DataLoader

        from groundforge.train.data import TRAIN_COLUMNS, ShardStream
        from groundforge.train.families import make_collator
        from groundforge.train.model import max_positions

        cfg = self.cfg
        dataset = ShardStream(self.sources, weights=self.weights, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                              rank=self.d.rank, world_size=self.d.world_size, image_root=cfg.image_root,
                              start=self.position.positions, worker_offset=self.position.next_worker,
                              exclude_image_ids=self.holdout, family=self.family,
                              columns=TRAIN_COLUMNS + (("meta",) if self.family.name.startswith("qwen") else ()))
        max_len = max_positions(self.model) if self.family.name == "florence2" else None
        target_len = min(cfg.max_target_length, max_len or cfg.max_target_length)
        collate = make_collator(self.family, self.processor, max_target_length=target_len, max_source_length=max_len)
        return DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
                          prefetch_factor=4 if cfg.num_workers else None, worker_init_fn=ignore_stop_signals)

    def _next_batch(self, batches) -> dict:
        """The next batch with samples; records of unreadable images are counted in `self.skipped`."""
        for batch in batches:
            self._count_skipped(batch["skipped"])
            if batch["inputs"] is not None:
                self.position.update(batch)
                return batch
        raise RuntimeError(f"rank {self.d.rank}: the shard stream ended (no rows for this rank)")

    def _count_skipped(self, skipped: dict) -> None:
        """Sum the skips the loader workers report; warn at the first one and whenever the total doubles."""
        self.skipped.update(skipped)
        total = sum(self.skipped.values())
        if total >= self._warn_skipped_at:
            self._warn_skipped_at = 2 * total
            log.warning("rank %d: %d records skipped so far (unreadable images): %s", self.d.rank, total,
                        dict(self.skipped))

    def _tensorboard(self, record: dict) -> None:
        if self.board is None:
            return
        step = record["step"]
        for key in ("loss", "lr", "grad_norm", "samples_per_s", "epoch"):
            if key in record:
                self.board.add_scalar(f"train/{key}", record[key], step)
        for key, value in (record.get("eval") or {}).items():
            self.board.add_scalar(f"eval/{key}", value, step)
        if record.get("val_loss") is not None:
            self.board.add_scalar("eval/val_loss", record["val_loss"], step)

    def _log(self, record: dict, bar) -> None:
        record["epoch"] = round(self.step * self.cfg.batch_size * self.cfg.grad_accum * self.d.world_size
                                / self.rows, 4)
        if self.skipped:
            record["skipped"] = dict(self.skipped)
        if self.truncated:
            record["truncated"] = dict(self.truncated)
        self.metrics_log.write(record)
        self._tensorboard(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")

    def checkpoint(self) -> None:
        """Save model, optimizer, scheduler, scaler, RNG and every rank's data position at the last
        completed step (rank 0 writes; all ranks take part in the gather)."""
        snap = self.position.committed
        ranks = gather({"positions": snap["positions"], "next_worker": snap["next_worker"]}, self.d)
        rngs = gather(snap["rng"], self.d)
        if self.d.main:
            trainer_state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                             "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                             "rng": rngs}
            save_checkpoint(checkpoint_dir(self.cfg.out, self.step), model=self.model, processor=self.processor,
                            trainer_state=trainer_state,
                            data_state={**self.data_settings, **self.optim_settings, "ranks": ranks,
                                        "step": self.step})
            prune_checkpoints(self.cfg.out, self.cfg.keep_checkpoints)
        barrier(self.d)

    def _evaluate(self) -> None:
        if self.d.main:
            record = _eval_during_training(self.cfg, self.model, self.processor, self.eval_sources, self.step,
                                           self.device, self.amp_dtype, self.metrics_log, self.family)
            self._tensorboard(record)
        barrier(self.d)

    def _finish(self) -> dict:
        summary = {"steps": self.step, "rows": self.rows, "trainable_parameters": self.trainable_params,
                   "parameters": self.total_params, "skipped": dict(self.skipped),
                   "truncated": dict(self.truncated), "loss": self.last_loss,
                   "seconds": round(time.time() - self.started, 1), **self.checks}
        if self.truncated:
            log.warning("truncated during training (records): %s; raise --max-target-length or shorten prompts",
                        dict(self.truncated))
        if self.do_eval and self.step % self.cfg.eval_every != 0:
            self._evaluate()
        if self.d.main:
            summary["final"] = _save_final(self.cfg, self.model, self.processor)
        barrier(self.d)
        return summary


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (less memory, ~30% more compute). Non-reentrant
    checkpointing works with frozen inputs (LoRA, --freeze-vision) without enable_input_require_grads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):      # transformers >= 5 name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for config in (getattr(base, "config", None), getattr(getattr(base, "config", None), "text_config", None)):
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = False


def _summary_writer(cfg: TrainConfig):
    if cfg.report_to in (None, "", "none"):
        return None
    if cfg.report_to != "tensorboard":
        raise ValueError(f"--report-to must be none or tensorboard, got {cfg.report_to!r}")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(cfg.out, "tensorboard"))


@contextlib.contextmanager
def _quiet_transformers_bars():
    """transformers' own progress bars (weight loading, generation) would break the training bar."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _logs_above(bar):
    """Log lines (warnings during training) printed above the progress bar instead of through it."""
    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _progress(cfg: TrainConfig, d: Dist, step: int, total: int):
    if not (cfg.progress and d.main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)


def _eval_sources(cfg: TrainConfig):
    from groundforge.train.data import discover, list_units

    return list_units(discover(cfg.eval_shards, cfg.eval_split))


def _eval_during_training(cfg, model, processor, sources, step, device, amp_dtype, metrics_log, family) -> None:
    import torch

    from groundforge.train.evaluate import run_eval as _run_eval_in_training

    out = os.path.join(cfg.out, "eval", f"step-{step:08d}.json")
    # evaluation must not draw from the training RNG: the checkpoint's RNG snapshot is taken before it, so a
    # run resumed there would otherwise see different dropout masks than the uninterrupted run
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        report = _run_eval_in_training(model, processor, sources, out=out, device=device,
                                       amp_dtype=amp_dtype, batch_size=cfg.eval_batch_size,
                                       max_samples=cfg.eval_max_samples, num_beams=cfg.eval_num_beams,
                                       max_new_tokens=cfg.eval_max_new_tokens, num_workers=0,
                                       image_root=cfg.image_root, examples=2, info={"step": step},
                                       progress=False, family=family)
        val_loss = validation_loss(model, processor, family, sources, device=device, amp_dtype=amp_dtype,
                                   batch_size=cfg.eval_batch_size, max_samples=cfg.eval_max_samples,
                                   max_target_length=cfg.max_target_length, image_root=cfg.image_root)
    record = {"step": step, "eval": report["headline"], "eval_n": report["n"], "val_loss": val_loss}
    metrics_log.write(record)
    return record


def validation_loss(model, processor, family, sources, *, device, amp_dtype=None, batch_size: int = 8,
                    max_samples: int | None = None, max_target_length: int = 1024,
                    image_root: str | None = None) -> float | None:
    """Mean token loss (teacher forcing, the training labels) over the first max_samples eval records, in
    shard order; None when there is none."""
    import itertools

    import torch

    from groundforge.train.data import EVAL_COLUMNS, ShardStream
    from groundforge.train.families import make_collator
    from groundforge.train.model import max_positions

    max_len = max_positions(model) if family.name == "florence2" else None
    ds = ShardStream(sources, shuffle=False, epochs=1, columns=EVAL_COLUMNS, image_root=image_root, family=family)
    collate = make_collator(family, processor, max_target_length=min(max_target_length, max_len or max_target_length),
                            max_source_length=max_len)
    records = itertools.islice(ds.iter_slot(0, 1), max_samples)
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            while chunk := list(itertools.islice(records, batch_size)):
                inputs = collate(chunk)["inputs"]
                count = label_tokens(inputs)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = model(**inputs).loss
                total += float(loss) * count
                tokens += count
    finally:
        model.train(was_training)
    return total / tokens if tokens else None


def _save_final(cfg: TrainConfig, model, processor) -> str:
    from groundforge.train.model import save

    final = os.path.join(cfg.out, "final")
    if cfg.lora:
        save(model, processor, os.path.join(cfg.out, "final-adapter"))
        model = model.merge_and_unload()
    save(model, processor, final)
    return final
