"""`groundforge train` and `groundforge eval` (click commands; the lead attaches them to the group).

Only click is imported here: torch, transformers and peft load when a command runs.
"""
from __future__ import annotations

import logging

import click

SPLIT_HELP = ("Splits of the shards to read, by their file names ({split}-00000-of-00004.parquet; files named otherwise are "
              "always used): 'train', 'val,testA', 'all', or '-train' for every split but train.")
SHARDS_HELP = ("Parquet shards: a glob, a file, a directory or a dataset output dir (its data/ is used); "
               "local or any fsspec URL (gs://, s3://, hf://). Repeat for several sets. NAME=GLOB names a "
               "set for --mix.")

# --device and --dtype take the same values as `build grit` (tests/test_console.py checks it); train.model reads the
# short dtype names, so the long ones are mapped onto those.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_HELP = ("auto: the GPU when there is one (Apple's mps too), else cpu. Choose among GPUs with "
               "CUDA_VISIBLE_DEVICES.")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
DTYPE_ALIASES_HELP = "fp32, bf16 and fp16 are accepted for float32, bfloat16 and float16."
_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _dtype(ctx, param, value):
    return _SHORT_DTYPE.get(value, value)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(f"{type(exc).__name__}: {exc}")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.command("train")
@click.option("--model", required=True,
              help="Hub id or directory of a Florence-2, PaliGemma (2), Qwen2-VL, Qwen2.5-VL or Kosmos-2 checkpoint, "
                   "e.g. florence-community/Florence-2-base-ft.")
@click.option("--shards", "shards", multiple=True, required=True, help=SHARDS_HELP)
@click.option("--mix", default=None, help="Sample named shard sets with weights: refcoco=0.5,counting=0.5. "
              "Without it all shards form one pool and every row is seen once per epoch.")
@click.option("--split", default="train", show_default=True, help=SPLIT_HELP)
@click.option("--exclude-holdout/--keep-holdout", default=True, show_default=True,
              help="Leave out of training the images listed in holdout_image_ids.txt of the builds that "
                   "--shards and --eval-shards come from.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--image-root", default=None, help="Resolve records whose image has only a path under this "
              "directory (default: the shard's directory).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Passes over the rows (converted to steps); default 1 when --steps is not given.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Per device.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: 1e-6 full fine-tune, 1e-4 LoRA].")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--warmup", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Warmup steps, or a fraction of all steps when below 1.")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default="linear", show_default=True,
              help="Decay after warmup.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping (0: off).")
@click.option("--freeze-vision", is_flag=True, help="requires_grad=False on the vision tower.")
@click.option("--lora", is_flag=True, help="Train a LoRA adapter on the language model's q/k/v/out/fc1/fc2.")
@click.option("--lora-r", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lora-alpha", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lora-dropout", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--save-every", type=click.IntRange(min=0), default=500, show_default=True,
              help="Checkpoint every N steps (0: only at the end).")
@click.option("--keep-checkpoints", type=click.IntRange(min=0), default=3, show_default=True,
              help="Keep the newest N checkpoints (0: all).")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Evaluate on --eval-shards every N steps and at the end (0: never).")
@click.option("--eval-shards", multiple=True, help="Shards for --eval-every (same syntax as --shards); images "
              "they share with the train shards (by image_sha256) are reported with a warning.")
@click.option("--eval-split", default="-train", show_default=True, help="Splits of --eval-shards. " + SPLIT_HELP)
@click.option("--eval-max-samples", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--eval-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--eval-num-beams", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--eval-max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out: weights, "
              "optimizer, scheduler, RNG and data position.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, callback=_dtype,
              help="Autocast dtype (weights stay float32). auto: bfloat16 on GPUs that support it, else float16; "
                   "float32 on CPU. " + DTYPE_ALIASES_HELP)
@click.option("--num-workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader workers (read, decode, preprocess).")
@click.option("--shuffle-buffer", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows in each worker's shuffle buffer.")
@click.option("--max-target-length", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Truncate targets to this many tokens.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Write a metrics.jsonl line every N steps.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in the backward pass: less "
              "memory, about a third more compute.")
@click.option("--report-to", type=click.Choice(["none", "tensorboard"]), default="none", show_default=True,
              help="Also log to TensorBoard (OUT/tensorboard; needs `pip install tensorboard`).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repo's own Python code (off: "
              "only transformers' native model classes are used).")
def train_command(**kw):
    """Fine-tune Florence-2, PaliGemma / PaliGemma 2, Qwen2-VL, Qwen2.5-VL or Kosmos-2 (the family is read from
    --model's config) on groundforge shards rendered for that family's format."""
    from groundforge.train.loop import Interrupted, TrainConfig, train

    if kw["steps"] is not None and kw["epochs"] is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    if kw["eval_every"] and not kw["eval_shards"]:
        raise click.UsageError("--eval-every needs --eval-shards")
    kw["shards"] = list(kw["shards"])
    kw["eval_shards"] = list(kw["eval_shards"])
    _setup_logging()
    try:
        summary = train(TrainConfig(**kw))
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    except Interrupted as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(128 + exc.signum) from None
    if "final" in summary:
        click.echo(final_line(summary))


def final_line(summary: dict) -> str:
    loss = "n/a" if summary.get("loss") is None else f"{summary['loss']:.4f}"
    extra = "".join(f"; {k} {_total(summary[k])} records" for k in ("skipped", "truncated") if summary.get(k))
    return (f"trained {summary['steps']} steps in {_duration(summary.get('seconds', 0))}, final loss {loss}"
            f"{extra}; model in {summary['final']}")


def _total(value) -> int:
    """A summary count: a number, or {reason: n}."""
    return sum(value.values()) if isinstance(value, dict) else int(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@click.command("eval")
@click.option("--model", required=True, help="Model directory (full model or LoRA adapter) or hub id.")
@click.option("--shards", "shards", multiple=True, required=True,
              help="Parquet shards (same forms as for train; repeatable). Every record is evaluated once.")
@click.option("--split", default="-train", show_default=True, help=SPLIT_HELP)
@click.option("--train-shards", multiple=True, help="Train shards to check for images shared with the eval "
              "shards (the train split next to --shards is always checked).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Report JSON; example images go to <out stem>_examples/.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Stop after N records.")
@click.option("--num-beams", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, callback=_dtype,
              help="Autocast dtype for generation. " + DTYPE_ALIASES_HELP)
@click.option("--image-root", default=None, help="Resolve path-only images under this directory.")
@click.option("--examples", type=click.IntRange(min=0), default=4, show_default=True,
              help="Rendered example images per task.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repo's own Python code.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
def eval_command(**kw):
    """Generate on shards (every split but train by default) with pinned decoding settings and score: rec
    acc@0.5 per split, grounded-caption phrase recall, counting and count_class exact match and MAE beside
    a majority-answer baseline, reg exact match and token-F1 against every sentence of the region."""
    from groundforge.train.evaluate import EvalConfig, evaluate, summary_line

    kw["shards"] = list(kw["shards"])
    kw["train_shards"] = list(kw["train_shards"])
    _setup_logging()
    try:
        report = evaluate(EvalConfig(**kw))
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    click.echo(summary_line(report))
    click.echo(f"report: {kw['out']}")
