"""The `groundforge` command line: the composition root. Nothing imports this module.

Commands are found by name and imported only when they run (or their help is asked for), so
`groundforge --help` and `--version` load neither Beam, torch, transformers nor spaCy. `build <name>` commands are
made from the builder registry (pipeline/registry.py) and each builder's config dataclass (pipeline/config.py).
`run` is the console entry point and the one place that decides how errors are printed and which exit code a
run ends with: 0 done, 1 a runtime error or nothing written, 2 a usage error, 130 interrupted. It also sets up
the console (pipeline/console.py: logging, noise filters, progress) before any command imports Beam;
`-q/--quiet` and `-v/--verbose` (on the group, and on every build command) set its verbosity.
"""
from __future__ import annotations

import importlib
import os
import re
import sys

import click
from groundforge.pipeline import console, registry
from groundforge.pipeline.command import HELP, PipelineCommand, verbosity_options
from groundforge.pipeline.config import click_params

# name -> ("module:attribute" of the click command, one-line help)
COMMANDS = {
    "render": ("groundforge.pipeline.render:render_cmd",
               "Re-render an output's records for another model format (images and boxes untouched)."),
    "validate": ("groundforge.pipeline.validate:validate_cmd",
                 "Check every shard of an output against the schema and dataset_info.json."),
    "preview": ("groundforge.pipeline.preview:preview_cmd",
                "Write an HTML gallery of sampled records with their boxes drawn."),
    "export": ("groundforge.pipeline.export:export_cmd",
               "Export an output to another trainer's layout (ms-swift, maestro, LLaVA, HF messages)."),
    "train": ("groundforge.train.cli:train_command", "Fine-tune a model directly off the shards."),
    "eval": ("groundforge.train.cli:eval_command", "Generate on shards and score the answers."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use; the listing uses the one-line help given here."""

    def __init__(self, *args, lazy: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            target = self.lazy[name][0]
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        rows += [(name, cmd.get_short_help_str(80)) for name, cmd in sorted(self.commands.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


class BuildGroup(click.Group):
    """`groundforge build <builder>`: one command per registered builder, made from its config dataclass."""

    def list_commands(self, ctx):
        return registry.builder_names()

    def get_command(self, ctx, name):
        if name not in registry.BUILDERS:
            return None
        return builder_command(registry.get_builder(name))

    def format_commands(self, ctx, formatter):
        with formatter.section("Builders"):
            formatter.write_dl([(name, registry.summary(name)) for name in registry.builder_names()])


def builder_command(builder) -> click.Command:
    def callback(ctx, **values):
        from groundforge.pipeline.run import run_command

        run_command(builder, builder.config(**values), ctx.args)

    return PipelineCommand(builder.name, params=click_params(builder.config), callback=click.pass_context(callback),
                           help=builder.help + "\n\nOptions not listed here go to Beam (--runner DataflowRunner ...).")


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings=HELP, params=verbosity_options())
@click.version_option(package_name="groundforge")
def main():
    """groundforge: grounded vision-language fine-tuning data as Parquet shards, built with Apache Beam."""


@main.group(cls=BuildGroup, context_settings=HELP)
def build():
    """Build a dataset (extra --options go to Beam: --runner DataflowRunner --project P --region R ...)."""


def _interrupted(signum, frame) -> None:
    """Ctrl-C: one line and exit 130 at once. Beam's local runners keep threads and worker processes that a
    KeyboardInterrupt in the main thread does not stop (the process would hang or print their tracebacks), so the
    build's lock is released, child processes are ended and the process exits without unwinding. A rerun
    replaces whatever the build had started to write."""
    from groundforge.pipeline.outdir import release_locks

    _end_children()
    release_locks()
    click.echo("\ninterrupted", err=True)
    os._exit(130)


def _end_children() -> None:
    """SIGKILL every descendant of this process (Beam's worker processes and theirs) before they print their own
    interrupt tracebacks; Linux /proc only, a no-op elsewhere."""
    import signal

    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    parents.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    todo, found = [os.getpid()], []
    while todo:
        for child in parents.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def run(args: list[str] | None = None) -> None:
    """The console entry point: one line per error, never a traceback (GROUNDFORGE_DEBUG=1 shows it)."""
    import signal

    console.setup()
    signal.signal(signal.SIGINT, _interrupted)  # `train` installs its own handler (save at the step boundary)
    try:
        code = main.main(args, prog_name="groundforge", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:  # noqa: BLE001 - the one place that turns any failure into one line
        if os.environ.get("GROUNDFORGE_DEBUG"):
            raise
        click.echo(f"error: {one_line(err)}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and message. Beam wraps a worker's error in a multi-line text that
    holds the worker's traceback; then the last `SomeError: message` line of it is the one that says what failed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1:
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt): ", line)]
        if raised:
            return raised[-1][:300]
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


if __name__ == "__main__":
    run()
