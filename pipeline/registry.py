"""The builders: name -> (module defining BUILDER, one-line summary). Adding a builder is one module and one
line here; the summary keeps `groundforge build --help` from importing every builder (and Beam)."""
from __future__ import annotations

import importlib

BUILDERS = {
    "counting": ("groundforge.pipeline.builders.counting",
                 "Counting questions (counting, count_class) from COCO boxes."),
    "docvqa": ("groundforge.pipeline.builders.docvqa", "DocVQA document questions (vqa): original JSON or HF Parquet."),
    "grit": ("groundforge.pipeline.builders.grit",
             "GRIT-style grounded captions (Kosmos-2): noun chunks grounded by boxes or a detector."),
    "refcoco": ("groundforge.pipeline.builders.refcoco",
                "RefCOCO / RefCOCO+ / RefCOCOg referring expressions (rec, reg)."),
}


def builder_names() -> list[str]:
    return sorted(BUILDERS)


def summary(name: str) -> str:
    return BUILDERS[name][1]


def get_builder(name: str):
    """The registered builder object; click.UsageError for an unknown name (with the known ones)."""
    if name not in BUILDERS:
        import click

        raise click.UsageError(f"unknown builder {name!r}; one of: {', '.join(builder_names())}")
    return importlib.import_module(BUILDERS[name][0]).BUILDER
