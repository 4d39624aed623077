"""Builder configuration: dataclasses whose fields carry their CLI help, type and default.

One field is one option everywhere: `--num-shards` on the command line, `num_shards=` in the Python API and in
dataset_info.json's `args`. `click_params` makes the click options of a config class; `make_config` checks
keyword arguments with the same click types, so the CLI and the API accept and refuse the same values.
No Beam import here: `groundforge --help` stays light.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

import click
from groundforge.transforms.codecs import FORMATS, FormatOptions

SPLIT_NAME = r"^\w+(\.\w+)*$"  # what the Hugging Face Hub accepts as a split name in data_files


def option(default: Any = MISSING, help: str = "", *, type: Any = None, check: Callable | None = None,
           flag: bool = False, cli: str | None = None, show_default: bool = True, record: bool = True):
    """A config field with its CLI option: `type` a click type (Choice, IntRange, ...), `check` a function
    value -> value raising click.BadParameter, `flag` a boolean --x/--no-x switch, `cli` the option name when it
    is not --field-name, `record` False for values kept out of dataset_info.json."""
    meta = {"help": help, "type": type, "check": check, "flag": flag, "cli": cli, "show_default": show_default,
            "record": record}
    return field(default=default, metadata=meta)


class InputFile(click.Path):
    """An existing local regular file (a FIFO or device would hang or flood a read), or any remote URL."""

    def __init__(self):
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value, param, ctx):
        import os
        import stat

        if "://" in str(value):
            return value
        value = super().convert(value, param, ctx)
        if not stat.S_ISREG(os.stat(value).st_mode):
            self.fail(f"{value}: not a regular file", param, ctx)
        return value


INPUT_FILE = InputFile()


def check_split(value: str | None) -> str | None:
    """A split name the Hub accepts (letters, digits, underscores, dots between words)."""
    if value is not None and not re.match(SPLIT_NAME, value):
        raise click.BadParameter(f"{value!r}: a split name is letters, digits and underscores (dots between words)")
    return value


_FORMAT_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(FormatOptions)}


@dataclass(frozen=True, kw_only=True)
class WriteConfig:
    """Options of every command that writes a groundforge output: where, which format, how sharded."""
    out: str = option(help="Output directory (local or gs://...).", type=click.Path(file_okay=False), record=False)
    format: str = option("florence2", "Target model format of prompt/target.", type=click.Choice(FORMATS))
    num_shards: int | None = option(None, "Shards per split (default: from --shard-size-mb).",
                                    type=click.IntRange(1), show_default=False)
    shard_size_mb: float = option(256.0, "Target shard size when --num-shards is not given.",
                                  type=click.FloatRange(min=0.001))
    seed: int = option(0, "Seed for template choice.", type=int)
    qwen_min_pixels: int = option(FormatOptions.qwen_min_pixels, _FORMAT_HELP["qwen_min_pixels"] + ".",
                                  type=click.IntRange(1))
    qwen_max_pixels: int = option(FormatOptions.qwen_max_pixels, _FORMAT_HELP["qwen_max_pixels"] + ".",
                                  type=click.IntRange(1))
    shikra_frame: str = option(FormatOptions.shikra_frame, _FORMAT_HELP["shikra_frame"] + ".",
                               type=click.Choice(("square", "plain")))

    def format_options(self) -> FormatOptions:
        """The rendering options of transforms.formats; click.BadParameter for a combination it refuses."""
        try:
            return FormatOptions(self.qwen_min_pixels, self.qwen_max_pixels, self.shikra_frame)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--qwen-min-pixels/--qwen-max-pixels") from None


@dataclass(frozen=True, kw_only=True)
class BuildConfig(WriteConfig):
    """Options every builder shares besides writing: decontamination and image limits."""
    exclude_images: str | None = option(None, "File of image ids (one per line) to drop, e.g. "
                                        "OUT/holdout_image_ids.txt of a refcoco build.", type=INPUT_FILE,
                                        show_default=False)
    max_pixels: int = option(89_478_485, "Decompression-bomb limit: images with more pixels are rejected.",
                             type=click.IntRange(1))
    max_image_bytes: int = option(64 * 1024 * 1024, "Byte cap of one image file or embedded image; larger ones are "
                                  "rejected (image/too_large).", type=click.IntRange(1))


def config_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def cli_name(f: dataclasses.Field) -> str:
    return f.metadata.get("cli") or "--" + f.name.replace("_", "-")


def _param_type(f: dataclasses.Field):
    given = f.metadata.get("type")
    if given is not None:
        return given
    if f.default is not MISSING and f.default is not None and not isinstance(f.default, bool):
        return type(f.default)
    return str


def _callback(f: dataclasses.Field):
    check = f.metadata.get("check")
    return (lambda ctx, param, value: check(value)) if check else None


def click_params(cls) -> list[click.Option]:
    """The click options of a config class, in field order (required fields have no default)."""
    params = []
    for f in config_fields(cls):
        meta = f.metadata
        required = f.default is MISSING and f.default_factory is MISSING
        if meta.get("flag"):
            name = cli_name(f)
            params.append(click.Option([f"{name}/--no-{name[2:]}", f.name], default=bool(f.default),
                                       help=meta.get("help"), show_default=True))
            continue
        params.append(click.Option(
            [cli_name(f), f.name], type=_param_type(f), required=required,
            default=None if required else f.default, show_default=meta.get("show_default", True) and not required,
            help=meta.get("help"), callback=_callback(f)))
    return params


def make_config(cls, values: dict, where: str = ""):
    """A config instance from keyword arguments (the Python API), checked like the CLI checks its options:
    unknown names (with a did-you-mean), missing required fields, and each value through its click type."""
    known = {f.name: f for f in config_fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise click.UsageError(f"{where}unknown option {name!r}{hint}")
    checked = {}
    for name, value in values.items():
        f = known[name]
        param = click.Option([cli_name(f)], type=_param_type(f))
        if value is not None and not f.metadata.get("flag"):
            value = param.type.convert(value, param, None)
        if f.metadata.get("check"):
            value = f.metadata["check"](value)
        checked[name] = value
    missing = [cli_name(f) for f in known.values()
               if f.default is MISSING and f.default_factory is MISSING and f.name not in checked]
    if missing:
        raise click.UsageError(f"{where}missing option {', '.join(missing)}")
    return cls(**checked)


def recorded(config) -> dict:
    """The config as recorded in dataset_info.json's args (fields marked record=False left out)."""
    return {f.name: getattr(config, f.name) for f in config_fields(type(config)) if f.metadata.get("record", True)}
