"""The format registry: pixel xyxy boxes <-> the box text of each target model format.

Each format is one module in `transforms.formats` (its Codec: box text, frame, prompts, text rules);
this module lists them. FORMATS, `get_codec` and `find_special_tokens` derive from that list, so a new
format is one new module plus one line in `_CODEC_CLASSES`.
"""
from __future__ import annotations

import re

from groundforge.transforms.formats.base import (
    GENERIC_TAGS,
    Codec,
    Decoded,
    FormatOptions,
)
from groundforge.transforms.formats.florence2 import Florence2Codec
from groundforge.transforms.formats.kosmos2 import Kosmos2Codec
from groundforge.transforms.formats.paligemma import PaliGemmaCodec
from groundforge.transforms.formats.qwen2vl import Qwen2VLCodec
from groundforge.transforms.formats.qwen25vl import Qwen25VLCodec, smart_resize
from groundforge.transforms.formats.shikra import ShikraCodec

__all__ = ["FORMATS", "Codec", "Decoded", "FormatOptions", "find_special_tokens", "get_codec", "smart_resize",
           "Florence2Codec", "Kosmos2Codec", "PaliGemmaCodec", "Qwen2VLCodec", "Qwen25VLCodec", "ShikraCodec"]

_CODEC_CLASSES = (Florence2Codec, Kosmos2Codec, PaliGemmaCodec, Qwen2VLCodec, Qwen25VLCodec, ShikraCodec)
_CODECS: dict[str, Codec] = {cls.name: cls() for cls in _CODEC_CLASSES}

FORMATS: tuple[str, ...] = tuple(_CODECS)


def get_codec(fmt: str, options: FormatOptions | None = None, frame: dict | None = None) -> Codec:
    """The codec of `fmt`, configured for `options`, or for a recorded meta["frame"] when one is given."""
    try:
        codec = _CODECS[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}") from None
    if options is not None:
        codec = codec.configured(options)
    if frame is not None:
        codec = codec.from_frame(frame)
    return codec


# ---------------------------------------------------------------------------------------------------------
# control tokens of every format (text that contains any of them is rejected, whatever the target format)

def _special_re() -> re.Pattern:
    patterns = list(dict.fromkeys(p for c in _CODECS.values() for p in c.special_patterns))
    tags = list(dict.fromkeys(GENERIC_TAGS + tuple(t for c in _CODECS.values() for t in c.tag_names)))
    return re.compile("|".join(patterns + [r"</?(?:" + "|".join(map(re.escape, tags)) + r")>"]))


_SPECIAL_RE = _special_re()


def find_special_tokens(text: str) -> list[str]:
    """Control tokens of any supported format found in `text`, in order of occurrence."""
    if not text:
        return []
    return [m.group(0) for m in _SPECIAL_RE.finditer(text)]
