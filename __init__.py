"""groundforge: grounded vision-language fine-tuning data as Parquet shards, built with Apache Beam.

The Python API (each call imports Beam and the builder only when it runs)::

    import groundforge
    info = groundforge.build("counting", coco="instances.json", images="images/", out="out/counting")
    groundforge.render("out/counting", out="out/counting-pali", format="paligemma")
    problems = groundforge.validate("out/counting")        # [] when the output meets its contract
    ds = groundforge.load("out/counting")                  # datasets.DatasetDict, every split, PIL images

This file is the package root: the repository's top-level folders install as groundforge.pipeline,
groundforge.schemas, groundforge.transforms and groundforge.train (see pyproject.toml).
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["build", "render", "validate", "load", "builders", "__version__"]


def build(builder: str, /, **options):
    """Build a dataset with a registered builder ("counting", "refcoco", "grit", ...); returns dataset_info.

    `options` are the builder's fields (the same names as its CLI flags, with underscores): `out` is required,
    everything else has a default. Extra Beam options go in `beam_args=[...]`."""
    from groundforge.pipeline.api import build as _build

    return _build(builder, **options)


def render(src: str, /, **options):
    """Re-render the records of output `src` for another model format (`out=`, `format=`); returns dataset_info."""
    from groundforge.pipeline.api import render as _render

    return _render(src, **options)


def validate(out: str) -> list[str]:
    """Every problem found in an output directory (empty when it meets the contract)."""
    from groundforge.pipeline.api import validate as _validate

    return _validate(out)


def load(out: str, config: str = "default", **kwargs):
    """The output as a `datasets.DatasetDict` through its dataset card (every split under its own name)."""
    from groundforge.pipeline.api import load as _load

    return _load(out, config, **kwargs)


def builders() -> list[str]:
    """Names of the registered builders."""
    from groundforge.pipeline.registry import builder_names

    return builder_names()
