"""What every target format shares: the Codec interface, render errors, format options, small helpers.

A format is one module in this package defining a `Codec` subclass: its box text (quantize/dequantize,
box_text, phrase_text, decode), its coordinate frame, its fixed prompts and the text it cannot carry.
`transforms.codecs` collects them into the registry; `transforms.templates` renders records through them.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Sequence

from groundforge.transforms.errors import ReasonError

Decoded = list[tuple[str, list[float]]]


# ---------------------------------------------------------------------------------------------------------
# errors (re-exported by transforms.templates)

class RenderError(ReasonError):
    """A record that cannot be rendered. `reason` is the reject reason (snake_case)."""


class ControlTokenError(RenderError):
    """Record text (caption, label, class) contains control tokens of some model format."""

    def __init__(self, field: str, tokens: list[str]):
        super().__init__("control_tokens", f"{field} contains {', '.join(dict.fromkeys(tokens))}")
        self.field = field
        self.tokens = tokens


class FormatTextError(RenderError):
    """Record text that one format cannot carry unambiguously (its parser would read it back differently).

    Reasons: `label_separator` (paligemma: `;` in a label), `label_markup` (`<`/`>` in a label that the
    format's parser stops at), `box_syntax` (shikra: `[0.1,0.2,0.3,0.4]` in text, which Shikra reads as a box).
    """

    def __init__(self, reason: str, fmt: str, field: str, text: str, why: str):
        super().__init__(reason, f"{field} {text[:80]!r}: {why} ({fmt})")
        self.field = field
        self.fmt = fmt


# ---------------------------------------------------------------------------------------------------------
# options

@dataclasses.dataclass(frozen=True)
class FormatOptions:
    """Per-format rendering options. The frame a record was rendered in is stored in its meta["frame"]."""

    qwen_min_pixels: int = dataclasses.field(default=3136, metadata={
        "help": "qwen25vl: min_pixels of smart_resize (released Qwen2.5-VL preprocessor and qwen-vl-utils: 3136)"})
    qwen_max_pixels: int = dataclasses.field(default=12845056, metadata={
        "help": "qwen25vl: max_pixels of smart_resize (released Qwen2.5-VL preprocessor and qwen-vl-utils: "
                "12845056); boxes are absolute pixels of the resized image"})
    shikra_frame: str = dataclasses.field(default="square", metadata={
        "help": "shikra: 'square' normalises boxes by the side of the image padded to a square, as Shikra's "
                "Expand2square pipeline does; 'plain' normalises by width and height"})

    def __post_init__(self):
        if not (isinstance(self.qwen_min_pixels, int) and isinstance(self.qwen_max_pixels, int)
                and 0 < self.qwen_min_pixels <= self.qwen_max_pixels):
            raise ValueError(f"need 0 < qwen_min_pixels <= qwen_max_pixels, got {self.qwen_min_pixels} and "
                             f"{self.qwen_max_pixels}")
        if self.shikra_frame not in ("square", "plain"):
            raise ValueError(f"shikra_frame must be 'square' or 'plain', got {self.shikra_frame!r}")


DEFAULT_OPTIONS = FormatOptions()


# ---------------------------------------------------------------------------------------------------------
# helpers

def clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


def floats(box: Sequence[float]) -> list[float]:
    vals = [float(v) for v in box]
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"box must be 4 finite numbers, got {box!r}")
    return vals


def size(w: float, h: float) -> tuple[float, float]:
    if not (w > 0 and h > 0):
        raise ValueError(f"image size must be positive, got {w}x{h}")
    return float(w), float(h)


def ints(q: Iterable, n: int) -> list[int]:
    vals = [int(v) for v in q]
    if len(vals) != n:
        raise ValueError(f"expected {n} quantized values, got {len(vals)}")
    return vals


EOS_RE = re.compile(r"</?s>|<pad>|<eos>|<bos>|<\|im_end\|>|<\|endoftext\|>")


def clean_label(text: str) -> str:
    """A label parsed from model output: no sequence-control tokens, no surrounding blanks."""
    return EOS_RE.sub("", text).strip()


def group_by_label(items: Sequence[tuple[str, Sequence[float]]]) -> list[tuple[str, list]]:
    """(label, box) pairs -> (label, boxes) in first-occurrence order of the labels."""
    groups: dict[str, list] = {}
    for label, box in items:
        groups.setdefault(label, []).append(box)
    return list(groups.items())


# ---------------------------------------------------------------------------------------------------------
# the codec interface

# sentencepiece / tokenizer specials shared by every format
GENERIC_TAGS = ("s", "pad", "unk", "eos", "bos", "mask")


class Codec:
    """One target format: box text, coordinate frame, prompts and text rules.

    Box text: `quantize` returns the integers in the order they appear in the text (PaliGemma: y first;
    Kosmos-2: two patch indices), `dequantize` maps them back to pixel xyxy. No codec emits a token outside
    its model's vocabulary. `decode` parses model output and never raises on junk or truncated text.

    Templates: `fixed_prompts` maps a task to the one prompt of a model with a fixed task token;
    tasks not listed take the shared free-form paraphrases (`paraphrases` adapts them per format).
    """

    name = ""
    fixed_prompts: dict[str, str] = {}
    question = "{}"            # how a counting question is asked
    class_sep = ", "           # between class names in a detection prompt
    boxes_only = False         # rec / phrase_grounding targets are the boxes alone (the text is in the prompt)
    label_stops = ""           # characters the format's parser stops a label at (rejected in labels)
    special_patterns: tuple[str, ...] = ()   # regexes of the format's control tokens
    tag_names: tuple[str, ...] = ()          # `<name>` / `</name>` control tags of the format

    # -- frame ------------------------------------------------------------------------------------------

    def configured(self, options: FormatOptions) -> "Codec":
        """This codec for `options` (formats without options return themselves)."""
        return self

    def frame(self, w: float, h: float) -> dict | None:
        """The coordinate frame of an image of w x h, as stored in meta["frame"] (None: nothing to record)."""
        return None

    def from_frame(self, frame: dict | None) -> "Codec":
        """The codec that decodes in a recorded frame (meta["frame"]); itself when there is none."""
        return self

    # -- prompts ----------------------------------------------------------------------------------------

    def paraphrases(self, task: str, shared: tuple[str, ...]) -> tuple[str, ...]:
        """Free-form prompts of `task` for this format, given the shared paraphrases."""
        return shared

    # -- box text ---------------------------------------------------------------------------------------

    def quantize(self, box: Sequence[float], w: float, h: float) -> tuple[int, ...]:
        raise NotImplementedError

    def dequantize(self, q: Sequence[int], w: float, h: float) -> list[float]:
        raise NotImplementedError

    def bin_size(self, w: float, h: float) -> tuple[float, float]:
        """Pixel width and height of one quantization bin (decode(encode(b)) is within one bin of b)."""
        raise NotImplementedError

    def box_text(self, box: Sequence[float], w: float, h: float) -> str:
        """One box, no label."""
        raise NotImplementedError

    def boxes_text(self, boxes: Sequence[Sequence[float]], w: float, h: float) -> str:
        """All boxes of one phrase, no label."""
        return "".join(self.box_text(b, w, h) for b in boxes)

    def phrase_text(self, label: str, boxes: Sequence[Sequence[float]], w: float, h: float) -> str:
        """One grounded phrase with its boxes, in the model's markup."""
        raise NotImplementedError

    def objects_text(self, items: Sequence[tuple[str, Sequence[float]]], w: float, h: float) -> str:
        """A detection answer: (label, box) pairs. Default: one phrase per label, first-occurrence order."""
        return "".join(self.phrase_text(label, boxes, w, h) for label, boxes in group_by_label(items))

    def decode(self, text: str, w: float, h: float) -> Decoded:
        """Model output -> [(label, pixel xyxy box)], one entry per box; '' where no label is attached."""
        raise NotImplementedError

    # -- task targets -----------------------------------------------------------------------------------

    def grounded_text(self, label: str, boxes: Sequence[Sequence[float]], w: float, h: float) -> str:
        """Target of a text -> boxes task (rec, phrase_grounding)."""
        if self.boxes_only:
            return self.boxes_text(boxes, w, h)
        return self.phrase_text(label, boxes, w, h)

    def region_text(self, expr: str, boxes: Sequence[Sequence[float]], w: float, h: float) -> str:
        """Target of a box -> text task (reg): the expression."""
        return expr

    def region_answer(self, text: str) -> str:
        """The expression in a reg answer (inverse of region_text)."""
        return text.strip()

    def caption_text(self, caption: str, groups: Sequence[tuple[int, int, list]], w: float, h: float) -> str:
        """Target of grounded_caption: groups are (start, end, boxes) of the grounded spans, in caption order.
        Default: the caption with each grounded phrase replaced by its phrase_text markup."""
        out, pos = [], 0
        for s, e, boxes in groups:
            out.append(caption[pos:s])
            out.append(self.phrase_text(caption[s:e], boxes, w, h))
            pos = e
        out.append(caption[pos:])
        return "".join(out)

    # -- text rules -------------------------------------------------------------------------------------

    def check_label(self, field: str, text: str) -> None:
        """Raise FormatTextError if `text`, written as a label next to box markup, would not read back."""
        if ";" in self.label_stops and ";" in text:
            raise FormatTextError("label_separator", self.name, field, text,
                                  "';' separates objects, so the label would read back as two")
        bad = sorted({c for c in self.label_stops if c != ";" and c in text})
        if bad:
            raise FormatTextError("label_markup", self.name, field, text,
                                  f"the model's parser ends a label at {' '.join(bad)}")

    def check_text(self, field: str, text: str) -> None:
        """Raise FormatTextError if any record text would inject this format's box syntax."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RoundedCodec(Codec):
    """Coordinates as round(v / size * top) clamped to 0..top, in x1, y1, x2, y2 order; decode q / top * size."""

    top = 1000

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = floats(box)
        w, h = size(w, h)
        t = self.top
        return (clamp(round(x1 / w * t), 0, t), clamp(round(y1 / h * t), 0, t),
                clamp(round(x2 / w * t), 0, t), clamp(round(y2 / h * t), 0, t))

    def dequantize(self, q, w, h):
        w, h = size(w, h)
        x1, y1, x2, y2 = (clamp(v, 0, self.top) for v in ints(q, 4))
        t = self.top
        return [x1 * w / t, y1 * h / t, x2 * w / t, y2 * h / t]

    def bin_size(self, w, h):
        return w / self.top, h / self.top
