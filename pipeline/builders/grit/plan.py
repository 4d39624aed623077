"""GRIT build settings handed to the stage DoFns (made from the config in grit/__init__.py)."""
from __future__ import annotations

from typing import NamedTuple

from groundforge.transforms.nounphrases import ABSTRACT_NOUNS, DEFAULT_MODEL

NAME = "grit"
TASKS = ("grounded_caption", "rec")
GROUNDERS = ("annotations", "detector", "florence2")
ANNOTATIONS = "annotations"  # tagged output and OUT/ table name
ASPECT_TOLERANCE = 0.01      # a GRIT-20M image resized within this relative aspect change keeps its boxes
CARD_NOTES = ("GRIT-style grounded captions (Kosmos-2): `grounded_caption` records (the caption with its grounded "
              "noun chunks) and `rec` records (one per referring expression, with its chunk's boxes). "
              "`annotations/` holds the same pairs in the GRIT-20M layout: `noun_chunks` and `ref_exps` as "
              "[start_char, end_char, x1, y1, x2, y2, score] with boxes normalised to 0..1. Captions and images "
              "keep the licenses of their sources.")


class Source(NamedTuple):
    """A checked input configuration."""
    kind: str                   # "coco" (also the shipped sample), "captions", "webdataset" or "grit20m"
    files: tuple                # input files; coco: ((captions json, instances json or None),)
    images: str | None
    caption_column: str = "caption"
    image_column: str = "image"


class Settings(NamedTuple):
    """Everything the DoFns need besides the input."""
    dataset: str
    split: str
    fmt: str
    seed: int
    tasks: tuple
    grounder: str | None        # None for --grit20m
    model: str | None
    filters: dict               # transforms.grounding.filter_detections keyword arguments
    exclude: frozenset
    max_pixels: int


class Grounding(NamedTuple):
    """Options of the RunInference grounding stage (detector / florence2)."""
    device: str = "auto"
    dtype: str = "float16"
    batch_size: int = 8
    trust_remote_code: bool = False
    accelerator: str | None = None


class Text(NamedTuple):
    spacy_model: str = DEFAULT_MODEL
    batch_size: int = 256
    abstract_nouns: frozenset = ABSTRACT_NOUNS


class Balance(NamedTuple):
    min_count: int = 3
    max_per_phrase: int = 100
    seed: int = 0
