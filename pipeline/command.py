"""Click pieces shared by the commands: -q/--quiet and -v/--verbose, the command class of pipeline runs (builds
and render), and the DATASET argument.

One rule for names: a command that reads a groundforge output takes it as its first argument, DATASET
(`validate`, `preview`, `render`, `export`; `--in` is kept as another spelling for render and export), and
`--out` is always what the command writes: a folder (build, render, export, train) or a file (preview's HTML,
eval's report).
"""
from __future__ import annotations

import click
from groundforge.pipeline import console

BEAM_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True}
HELP = {"help_option_names": ["-h", "--help"]}

QUIET_HELP = "Print only the final `done in ...` line, warnings and errors (no progress, no summary)."
VERBOSE_HELP = ("Also print progress when stderr is not a terminal (a line every 10 s), debug lines, worker "
                "tracebacks and developer-facing Python warnings (DeprecationWarning, FutureWarning).")


def _verbosity(ctx, param, value):
    """Callback of --quiet/--verbose: the verbosity goes into the context (read by run_command) and the console."""
    if value:
        level = console.QUIET if param.name == "quiet" else console.VERBOSE
        if ctx.meta.get(console.VERBOSITY_KEY, level) != level:
            raise click.UsageError("give --quiet or --verbose, not both")
        ctx.meta[console.VERBOSITY_KEY] = level
        console.set_verbosity(level)
    return value


def verbosity_options() -> list[click.Option]:
    """-q/--quiet and -v/--verbose; not part of any config (they change the terminal, not the output)."""
    return [click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True, callback=_verbosity,
                         help=QUIET_HELP),
            click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True, callback=_verbosity,
                         help=VERBOSE_HELP)]


class PipelineCommand(click.Command):
    """A command that runs a pipeline (a build, render): its config's options, plus -q/--quiet and -v/--verbose.
    Those two are parsed and listed in --help but kept out of `params`, which the dataset card's command line is
    made from: a quiet build and a verbose one write the same bytes. Options it does not know go to Beam."""

    def __init__(self, *args, **kwargs):
        kwargs["context_settings"] = {**BEAM_CONTEXT, **HELP, **kwargs.get("context_settings", {})}
        super().__init__(*args, **kwargs)

    def get_params(self, ctx):
        return [*self.params, *verbosity_options(), *super().get_params(ctx)[len(self.params):]]


def dataset_argument() -> click.Argument:
    """DATASET: the groundforge output a command reads (optional where `--in` may name it instead)."""
    return click.Argument(["dataset"], required=False, metavar="DATASET")


def one_dataset(positional: str | None, option: str | None, ctx: click.Context | None = None) -> str:
    """The dataset a command reads, given as DATASET or as --in (the same value twice is fine). On a command that
    passes unknown options to Beam (`ctx`), click fills an empty DATASET with the first such option: it goes back
    to the Beam arguments."""
    if ctx is not None and positional and positional.startswith("-"):
        ctx.args.insert(0, positional)
        positional = None
    if positional and option and positional != option:
        raise click.UsageError(f"two datasets given: {positional} and --in {option}; give one")
    if not (positional or option):
        raise click.UsageError("missing DATASET: the groundforge output to read")
    return positional or option
