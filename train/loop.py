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
import shutil
import signal
import time
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

    from train.model import save

    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, processor, tmp)
    torch.save(trainer_state, os.path.join(tmp, STATE_FILE))
    with open(os.path.join(tmp, DATA_STATE_FILE), "w") as f:
        json.dump(data_state, f, indent=2, sort_keys=True)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def prune_checkpoints(out: str, keep: int) -> None:
    root = os.path.join(out, CHECKPOINTS)
    if keep <= 0 or not os.path.isdir(root):
        return
    done = sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp"))
    for d in done[:-keep]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


# ---------------------------------------------------------------- metrics log

class MetricsLog:
    """Append-only JSONL. Lines past `start_step` (a lost run's, after the checkpoint resumed from; or all
    of them on a fresh start) are dropped when it opens."""

    def __init__(self, path: str, enabled: bool, start_step: int = 0):
        self.path = path
        self.enabled = enabled
        if enabled and os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= start_step]
            with open(path, "w") as f:
                f.writelines(kept)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")


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


def _load_sources(cfg: TrainConfig):
    from train.data import discover, list_units, parse_mix

    sources = list_units(discover(cfg.shards))
    weights = parse_mix(cfg.mix) if cfg.mix else None
    if weights is not None and set(weights) != set(sources):
        raise ValueError(f"--mix and --shards NAME=GLOB must name the same sources; unmatched: "
                         f"{sorted(set(weights) ^ set(sources))}")
    return sources, weights


def _build_model(cfg: TrainConfig, resume_dir: str | None):
    from train.model import apply_lora, freeze_vision, load_model, load_processor

    if resume_dir and cfg.lora:
        from peft import PeftModel

        base = load_model(cfg.model, cfg.trust_remote_code)
        model = PeftModel.from_pretrained(base, resume_dir, is_trainable=True)
    else:
        model = load_model(resume_dir or cfg.model, cfg.trust_remote_code)
        if cfg.lora:
            model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    if cfg.freeze_vision:
        freeze_vision(model)
    processor = load_processor(resume_dir or cfg.model, cfg.trust_remote_code)
    return model, processor


def _check_resume(saved: dict, current: dict) -> None:
    keys = ("n_slots", "num_workers", "world_size", "batch_size", "seed", "units", "mix", "shuffle_buffer")
    diff = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError("--resume needs the data settings of the interrupted run (same shards, --mix, "
                         f"--batch-size, --num-workers, --seed, --shuffle-buffer, world size): {detail}")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Preemption (SIGTERM) saves a checkpoint like Ctrl-C does."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def train(cfg: TrainConfig, on_step=None) -> dict:
    """Run training; returns a summary. `on_step(step, info)` is called after every optimizer step with
    info = {"loss", "lr", "ids"} (the record ids of that step, in order) -- used by tests."""
    import torch

    from train.data import total_rows
    from train.model import count_parameters, max_positions, resolve_amp_dtype, resolve_device

    d = init_distributed()
    device = resolve_device(cfg.device, d.local_rank)
    amp_dtype = resolve_amp_dtype(cfg.dtype, device)
    os.makedirs(cfg.out, exist_ok=True)
    torch.manual_seed(cfg.seed)

    sources, weights = _load_sources(cfg)
    rows = total_rows(sources)
    if rows == 0:
        raise ValueError("the shards hold no rows")
    workers = max(1, cfg.num_workers)
    n_slots = d.world_size * workers
    n_units = sum(len(u) for u in sources.values())
    if n_units < d.world_size:
        raise ValueError(f"{n_units} row groups cannot feed {d.world_size} ranks; write more, smaller shards")
    if n_units < n_slots:
        log.warning("%d row groups for %d loader slots: %d workers will idle", n_units, n_slots, n_slots - n_units)
    total_steps = plan_steps(cfg, rows, d.world_size)

    resume_dir = latest_checkpoint(cfg.out) if cfg.resume else None
    if not cfg.resume and latest_checkpoint(cfg.out):
        raise ValueError(f"{cfg.out} already holds checkpoints: pass --resume to continue that run, "
                         f"or choose a new --out")
    if cfg.resume and resume_dir is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", cfg.out)
    data_now = {"n_slots": n_slots, "num_workers": workers, "world_size": d.world_size,
                "batch_size": cfg.batch_size, "seed": cfg.seed, "units": units_digest(sources), "mix": weights,
                "shuffle_buffer": cfg.shuffle_buffer}

    model, processor = _build_model(cfg, resume_dir)
    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.schedule, warmup_steps(cfg.warmup, total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    step, position = 0, DataPosition({}, 0, cfg.num_workers)
    if resume_dir:
        state = torch.load(os.path.join(resume_dir, STATE_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(resume_dir, DATA_STATE_FILE)) as f:
            data_state = json.load(f)
        _check_resume(data_state, data_now)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = state["step"]
        mine = data_state["ranks"][d.rank]
        position = DataPosition({int(k): v for k, v in mine["positions"].items()}, mine["next_worker"],
                                cfg.num_workers)
        set_rng_state(state["rng"][min(d.rank, len(state["rng"]) - 1)])
        position.commit()
    if d.main:
        if not resume_dir:
            with open(os.path.join(cfg.out, "train_config.json"), "w") as f:
                json.dump(asdict(cfg), f, indent=2, sort_keys=True)
        log.info("training %s: %d/%d parameters trainable, %d rows, %d steps%s", cfg.model, trainable, total,
                 rows, total_steps, f", resuming at step {step} from {resume_dir}" if resume_dir else "")

    net = model
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    loader = _make_loader(cfg, sources, weights, processor, max_positions(model), d, position, device)
    batches = iter(loader)
    metrics_log = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), d.main, step)
    do_eval = bool(cfg.eval_every and cfg.eval_shards)
    eval_sources = _eval_sources(cfg) if d.main and do_eval else None

    def checkpoint(at: int) -> None:
        snap = position.committed
        ranks = gather({"positions": snap["positions"], "next_worker": snap["next_worker"]}, d)
        rngs = gather(snap["rng"], d)
        if d.main:
            trainer_state = {"step": at, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "scaler": scaler.state_dict(), "rng": rngs}
            save_checkpoint(checkpoint_dir(cfg.out, at), model=model, processor=processor,
                            trainer_state=trainer_state, data_state={**data_now, "ranks": ranks, "step": at})
            prune_checkpoints(cfg.out, cfg.keep_checkpoints)
        barrier(d)

    bar = _progress(cfg, d, step, total_steps)
    window = {"loss": 0.0, "steps": 0, "samples": 0, "t0": time.time()}
    saved_at = step
    try:
        with _sigterm_as_interrupt():
            while step < total_steps:
                loss_sum, ids = torch.zeros((), device=device), []
                for micro in range(cfg.grad_accum):
                    batch = next(batches, None)
                    if batch is None:
                        raise RuntimeError(f"rank {d.rank}: the shard stream ended (no rows for this rank)")
                    position.update(batch)
                    ids.extend(batch["ids"])
                    inputs = {k: v.to(device, non_blocking=True) for k, v in batch["inputs"].items()}
                    sync = micro == cfg.grad_accum - 1 or d.world_size == 1
                    with (contextlib.nullcontext() if sync else net.no_sync()):
                        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                            enabled=amp_dtype is not None):
                            loss = net(**inputs).loss / cfg.grad_accum
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach().float()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                position.commit()
                loss_sum = loss_sum.item()
                window["loss"] += loss_sum
                window["steps"] += 1
                window["samples"] += len(ids) * d.world_size
                if bar is not None:
                    bar.update(1)
                if step % max(1, cfg.log_every) == 0 or step == total_steps:
                    record = _log_record(step, window, lr, grad_norm, ids)
                    record["epoch"] = round(step * cfg.batch_size * cfg.grad_accum * d.world_size / rows, 4)
                    metrics_log.write(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")
                    window = {"loss": 0.0, "steps": 0, "samples": 0, "t0": time.time()}
                if on_step is not None:
                    on_step(step, {"loss": loss_sum, "lr": lr, "ids": ids})
                if cfg.save_every and step % cfg.save_every == 0:
                    checkpoint(step)
                    saved_at = step
                if do_eval and step % cfg.eval_every == 0:
                    if d.main:
                        _eval_during_training(cfg, model, processor, eval_sources, step, device, amp_dtype,
                                              metrics_log)
                    barrier(d)
    except KeyboardInterrupt:
        if step > saved_at:
            log.warning("interrupted at step %d: saving a checkpoint to resume from", step)
            checkpoint(step)
        raise
    finally:
        if bar is not None:
            bar.close()

    if saved_at != step:
        checkpoint(step)
    summary = {"steps": step, "rows": rows, "trainable_parameters": trainable, "parameters": total}
    if d.main:
        if do_eval and step % cfg.eval_every != 0:
            _eval_during_training(cfg, model, processor, eval_sources, step, device, amp_dtype, metrics_log)
        summary["final"] = _save_final(cfg, model, processor)
    barrier(d)
    return summary


def _make_loader(cfg: TrainConfig, sources, weights, processor, max_len, d: Dist, position, device):
    """Endless shuffled stream for this rank, starting at the saved position of each of its slots."""
    import torch
    from torch.utils.data import DataLoader

    from train.collate import Florence2Collator
    from train.data import ShardStream

    dataset = ShardStream(sources, weights=weights, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                          rank=d.rank, world_size=d.world_size, image_root=cfg.image_root,
                          start=position.positions, worker_offset=position.next_worker)
    target_len = min(cfg.max_target_length, max_len or cfg.max_target_length)
    collate = Florence2Collator(processor, target_len, max_source_length=max_len)
    return DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
                      prefetch_factor=4 if cfg.num_workers else None)


def _log_record(step: int, window: dict, lr: float, grad_norm, ids: list[str]) -> dict:
    elapsed = max(1e-9, time.time() - window["t0"])
    return {"step": step, "loss": window["loss"] / max(1, window["steps"]), "lr": lr,
            "grad_norm": float(grad_norm), "samples_per_s": window["samples"] / elapsed,
            "batch_digest": batch_digest(ids), "time": round(time.time(), 3)}


def _progress(cfg: TrainConfig, d: Dist, step: int, total: int):
    if not (cfg.progress and d.main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)


def _eval_sources(cfg: TrainConfig):
    from train.data import discover, list_units

    return list_units(discover(cfg.eval_shards))


def _eval_during_training(cfg, model, processor, sources, step, device, amp_dtype, metrics_log) -> None:
    from train.evaluate import run_eval

    out = os.path.join(cfg.out, "eval", f"step-{step:08d}.json")
    report = run_eval(model, processor, sources, out=out, device=device,
                      amp_dtype=amp_dtype, batch_size=cfg.eval_batch_size, max_samples=cfg.eval_max_samples,
                      num_beams=cfg.eval_num_beams, max_new_tokens=cfg.eval_max_new_tokens,
                      num_workers=0, image_root=cfg.image_root, examples=2, info={"step": step})
    metrics_log.write({"step": step, "eval": report["headline"], "eval_n": report["n"]})


def _save_final(cfg: TrainConfig, model, processor) -> str:
    from train.model import save

    final = os.path.join(cfg.out, "final")
    if cfg.lora:
        save(model, processor, os.path.join(cfg.out, "final-adapter"))
        model = model.merge_and_unload()
    save(model, processor, final)
    return final
