"""The Python API behind `import groundforge`: the same builders, checks and outputs as the CLI."""
from __future__ import annotations

from groundforge.pipeline.config import make_config


def build(builder: str, /, *, beam_args=(), **options) -> dict | None:
    """Build with a registered builder; `options` are its config fields (see `groundforge build NAME --help`,
    with underscores). Returns dataset_info (None when a remote runner was not waited for)."""
    from groundforge.pipeline.registry import get_builder
    from groundforge.pipeline.run import run

    b = get_builder(builder)
    return run(b, make_config(b.config, options, where=f"build {builder}: "), list(beam_args))


def render(src: str, /, *, beam_args=(), **options) -> dict | None:
    """Re-render output `src` for another format: `render(src, out=..., format=...)`."""
    from groundforge.pipeline.render import RENDERER
    from groundforge.pipeline.run import run

    return run(RENDERER, make_config(RENDERER.config, {"src": src, **options}, where="render: "), list(beam_args))


def validate(out: str) -> list[str]:
    from groundforge.pipeline.validate import validate_output

    return validate_output(out)


def load(out: str, config: str = "default", **kwargs):
    """`datasets.load_dataset(out, config)`: every split under its own name, images as PIL (through the card)."""
    import datasets

    return datasets.load_dataset(str(out), config, **kwargs)
