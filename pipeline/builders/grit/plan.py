"""GRIT build settings handed to the stage DoFns (made from the config in grit/__init__.py)."""
from __future__ import annotations

from typing import NamedTuple

from groundforge.transforms.nounphrases import ABSTRACT_NOUNS, DEFAULT_MODEL

NAME = "grit"
TASKS = ("grounded_caption", "rec")
GROUNDERS = ("annotations", "detector", "florence2")
ANNOTATIONS = "annotations"  # tagged output and OUT/ table name
ASPECT_TOLERANCE = 0.01      # a GRIT-20M image resized within this relative aspect change keeps its boxes


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
    options: object = None      # transforms.formats FormatOptions
    keep_all_boxes: bool = False  # a singular phrase keeps every box (off: one box, or dropped when ambiguous)


class Grounding(NamedTuple):
    """Options of the RunInference grounding stage (detector / florence2)."""
    device: str = "auto"
    dtype: str = "float16"
    batch_size: int = 8
    trust_remote_code: bool = False
    accelerator: str | None = None
    use_fast: bool = True       # the torchvision-based image processor where transformers has one (else the slow one)


class Text(NamedTuple):
    spacy_model: str = DEFAULT_MODEL
    batch_size: int = 256
    abstract_nouns: frozenset = ABSTRACT_NOUNS


class Balance(NamedTuple):
    min_count: int = 3
    max_per_phrase: int = 100
    seed: int = 0
