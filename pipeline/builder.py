"""The builder shape: a config dataclass, a driver-side `prepare`, and `expand` that builds the Beam graph.

`run` (pipeline/run.py) owns everything around it: Beam options, marking the output incomplete, flattening
rejects and stats, the shard writer and dataset_info.json. A builder only says what it reads and makes:

    class MyBuilder(Builder):
        name = "mine"
        config = MyConfig                 # a BuildConfig subclass: one field per option
        def prepare(self, config): ...    # check inputs before anything runs; return a plan (or None)
        def expand(self, p, config, plan) -> Outputs: ...
    BUILDER = MyBuilder()

and one line in pipeline/registry.py makes it `groundforge build mine` and `groundforge.build("mine", ...)`.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class Outputs(NamedTuple):
    """What `expand` returns: image groups (see writer.image_groups), lists of reject and stat PCollections,
    and extra tables {name: (PCollection, writer.Table)} written as OUT/<name>/."""
    groups: Any
    rejects: list
    stats: list
    tables: dict = {}


class Builder:
    name: str = ""
    config: type = None
    help: str = ""                 # the command's help text

    def prepare(self, config) -> Any:
        """Check the configuration (files exist, layouts detected, models loadable) before any output is
        touched; raise click.UsageError / click.BadParameter / ReaderError with a one-line message."""
        return None

    def expand(self, p, config, plan) -> Outputs:
        raise NotImplementedError

    def card(self, config, plan):
        """The dataset card's facts (pipeline.card.CardInfo): licenses, sources, citations."""
        raise NotImplementedError

    def dataset(self, config, plan) -> str:
        """The dataset name written into dataset_info.json and the card."""
        return config.dataset

    def builder_label(self, config, plan) -> str:
        return self.name

    def expected(self, config, plan) -> dict:
        """Totals known before the pipeline runs, for the progress line's k/n and ETA: {stat name: count}."""
        return {}

    def input_paths(self, config, plan) -> list[str]:
        """Local input files and folders: the output may not contain them (a glob matching its own shards)."""
        return []

    def size_hint(self, config, plan) -> int | None:
        """Bytes of input (the input files and the image folder, `--images`), for the local runner's choice of mode
        (pipeline.options.local_mode); None: unknown. A small annotation file may point at gigabytes of images."""
        from groundforge.pipeline.options import input_bytes

        return input_bytes([*self.input_paths(config, plan), getattr(config, "images", None) or ""])

    def inputs(self, config, plan) -> dict:
        """Resolved input facts recorded in dataset_info.json's args beside the config (layout, ...)."""
        return {}
