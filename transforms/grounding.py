"""Grounding noun chunks to boxes: COCO category synonyms, annotation grounding, detector output
mapping and the Kosmos-2 box filters.

A detection is `(chunk_idx, box, score)` with `box` a pixel xyxy list. Grounders (annotations,
zero-shot detector, Florence-2) produce detections; `filter_detections` applies the filters and
counts every drop by reason so the pipeline can report them. No torch here: detector outputs
arrive as CPU lists.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Collection, Iterable, Mapping, NamedTuple, Sequence

from groundforge.transforms.boxes import BoxError, area, checked_box, nms

# Kosmos-2 defaults.
SCORE_THRESHOLD = 0.65  # keep score > threshold
NMS_IOU = 0.5           # suppress a box whose IoU with a better kept box is > this
MAX_AREA_FRAC = 0.95    # drop boxes covering more than this fraction of the image
# Not in the paper; chosen here: a box narrower than 4 px or under 0.01 % of the image is detector
# noise and cannot be told apart after quantisation (Kosmos-2's 32x32 grid is 7 px on a 224 input).
MIN_SIDE_PX = 4.0
MIN_AREA_FRAC = 1e-4

# Drop reasons counted by filter_detections / detections_from_output (the builder reports each as a
# `dropped_<reason>` stat): score_below_threshold, box_too_large, box_too_small, nms_suppressed, no_box_left,
# bad_label, ambiguous_singular, singular_extra_box, and the boxes.BoxError reasons of invalid boxes (bad_box,
# nan_box, inverted_box, outside_image, empty_box).
# ambiguous_singular (a chunk, ground_with_annotations): a singular phrase ("A bride") matched several boxes of its
#   category; nothing tells which one it names, so it gets none.
# singular_extra_box (a box, filter_detections with `singular`): a detector box of a singular phrase below its
#   best one.

COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# Words (singular; irregular plurals listed too) naming each category. Ambiguous words are left
# out on purpose: "glass" (eyewear or drinkware), "bag", "glove", "computer", "screen", "van",
# "fan", "pitcher", "trolley".
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "person", "people", "persons", "man", "men", "woman", "women", "boy", "girl", "guy", "child",
        "children", "kid", "baby", "toddler", "infant", "lady", "gentleman", "gentlemen", "adult",
        "teenager", "teen", "youngster", "player", "skier", "surfer", "skateboarder", "snowboarder",
        "rider", "biker", "cyclist", "pedestrian", "officer", "policeman", "policewoman", "cop",
        "soldier", "chef", "cook", "worker", "tourist", "student", "bride", "groom", "mother",
        "father", "mom", "dad", "son", "daughter", "brother", "sister", "friend", "batter", "catcher",
        "umpire", "athlete", "passenger", "driver", "individual", "customer", "vendor",
        "spectator", "grandmother", "grandfather", "grandma", "grandpa", "husband", "wife",
    ),
    "bicycle": ("bicycle", "bike", "cycle", "bmx"),
    "car": ("car", "automobile", "sedan", "taxi", "cab", "suv", "jeep", "minivan", "hatchback",
            "limo", "limousine"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "moped", "scooter", "dirt bike",
                   "motor cycle"),
    "airplane": ("airplane", "aeroplane", "plane", "jet", "airliner", "aircraft", "jetliner",
                 "jumbo jet", "airplanes"),
    "bus": ("bus", "buses", "busses", "double decker", "trolleybus"),
    "train": ("train", "locomotive", "tram", "streetcar", "railcar"),
    "truck": ("truck", "lorry", "pickup", "firetruck", "pickup truck"),
    "boat": ("boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "vessel", "rowboat",
             "speedboat", "tugboat", "steamboat", "raft"),
    "traffic light": ("traffic light", "stoplight", "stop light", "traffic signal"),
    "fire hydrant": ("fire hydrant", "hydrant", "fireplug"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench", "benches"),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "geese", "swan", "parrot",
             "sparrow", "crow", "eagle", "hawk", "owl", "pelican", "flamingo", "chicken", "hen",
             "rooster", "dove", "heron", "penguin", "ostrich", "finch", "robin"),
    "cat": ("cat", "kitten", "kitty", "tabby", "feline"),
    "dog": ("dog", "puppy", "pup", "doggy", "doggie", "canine", "hound", "terrier", "poodle",
            "retriever", "labrador", "beagle", "bulldog", "chihuahua", "dachshund", "husky",
            "collie", "sheepdog", "pug", "corgi", "dalmatian"),
    "horse": ("horse", "pony", "foal", "stallion", "mare", "colt"),
    "sheep": ("sheep", "lamb", "ewe"),
    "cow": ("cow", "cattle", "bull", "calf", "calves", "ox", "oxen", "heifer", "steer"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly", "polar bear"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "rucksack", "knapsack", "book bag"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse", "pocketbook", "tote"),
    "tie": ("tie", "necktie", "bowtie", "bow tie"),
    "suitcase": ("suitcase", "luggage", "baggage"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard", "snow board"),
    "sports ball": ("sports ball", "ball", "football", "soccer ball", "basketball", "volleyball",
                    "tennis ball", "softball", "baseball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat", "softball bat"),
    "baseball glove": ("baseball glove", "mitt", "baseball mitt", "catcher's mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "wineglass", "champagne glass", "goblet"),
    "cup": ("cup", "mug", "teacup"),
    "fork": ("fork",),
    "knife": ("knife", "knives"),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "sub sandwich"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"),
    "chair": ("chair", "stool", "armchair"),
    "couch": ("couch", "sofa", "loveseat", "love seat", "settee"),
    "potted plant": ("potted plant", "plant", "houseplant", "house plant"),
    "bed": ("bed",),
    "dining table": ("dining table", "table"),
    "toilet": ("toilet",),
    "tv": ("tv", "television", "tv set", "television set", "monitor", "flat screen"),
    "laptop": ("laptop", "laptop computer", "notebook computer"),
    "mouse": ("mouse", "computer mouse", "mice"),
    "remote": ("remote", "remote control", "controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "cellphone", "phone", "smartphone", "mobile phone", "iphone",
                   "smart phone"),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"),
    "book": ("book", "textbook", "paperback"),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors", "scissor", "shears"),
    "teddy bear": ("teddy bear", "teddy", "stuffed animal", "stuffed bear"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}


def _build_tables():
    single: dict[str, str] = {}
    multi: dict[tuple[str, ...], str] = {}
    for cat, words in _SYNONYMS.items():
        for phrase in (cat,) + words:
            toks = tuple(_words(phrase))
            table, key = (single, toks[0]) if len(toks) == 1 else (multi, toks)
            if table.setdefault(key, cat) != cat:
                raise ValueError(f"synonym {phrase!r} names both {table[key]!r} and {cat!r}")
    return single, multi


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'s)?", text.lower())


SINGLE_WORD, MULTI_WORD = _build_tables()
_MAX_WORDS = max(len(k) for k in MULTI_WORD)


def _singular(word: str) -> list[str]:
    """Candidate singular forms for a word whose lemma is unknown."""
    out = [word]
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.append(word[:-1])
    return out


def category_for(chunk_text: str, root_lemma: str | None = None) -> str | None:
    """COCO category a noun chunk names, or None.

    The chunk's last words are matched first against multiword names ("a red fire hydrant",
    "two hot dogs", "wine glasses"), then its head word alone. The head is the chunk's last word,
    in the lemma form spaCy gave (`root_lemma`) or, without one, a naive singular.
    """
    words = _words(chunk_text)
    if not words:
        return None
    heads = ([root_lemma.lower()] if root_lemma else []) + _singular(words[-1])
    for n in range(min(_MAX_WORDS, len(words)), 1, -1):
        for head in heads:
            cat = MULTI_WORD.get(tuple(words[-n:-1]) + (head,))
            if cat:
                return cat
    for head in heads:
        cat = SINGLE_WORD.get(head)
        if cat:
            return cat
    return None


class Detection(NamedTuple):
    chunk: int
    box: list[float]
    score: float


_SINGULAR_WORDS = frozenset({"a", "an", "one", "this", "that", "each", "every", "another", "the"})


def is_singular(chunk) -> bool:
    """Whether a chunk names one thing: `Chunk.singular` as spaCy's tags decided it, else (a `(text, root_lemma)`
    pair, or a Chunk built without it) a guess from the words: a singular determiner first and a head that is its
    own lemma (or, without a lemma, does not end in "s"). A bare noun counts as not singular here: unknown."""
    flag = getattr(chunk, "singular", None)
    if flag is not None:
        return bool(flag)
    text, lemma = (chunk.text, chunk.root_lemma) if hasattr(chunk, "root_lemma") else chunk
    words = _words(text)
    if len(words) < 2 or words[0] not in _SINGULAR_WORDS:
        return False
    head = words[-1]
    return head == lemma.lower() if lemma else not (head.endswith("s") and not head.endswith("ss"))


def singular_chunks(chunks: Sequence) -> frozenset[int]:
    """Indices of the chunks that name one thing (`is_singular`): the `singular` argument of filter_detections."""
    return frozenset(i for i, chunk in enumerate(chunks) if is_singular(chunk))


def ground_with_annotations(chunks: Sequence, annotations: Iterable[tuple[str, Sequence[float]]], *,
                            drops: Counter | None = None, keep_ambiguous: bool = False) -> list[Detection]:
    """Detections (score 1.0) linking each chunk to the annotated boxes of the category it names.

    `chunks` are `nounphrases.Chunk`s (or `(text, root_lemma)` pairs); `annotations` are
    `(category_name, xyxy_pixel_box)` pairs with COCO category names. A plural chunk ("two people") takes every
    box of its category. A singular chunk ("A bride", `is_singular`) takes the box when its category has exactly
    one; with several, nothing says which one it names, so it gets none and `drops["ambiguous_singular"]` counts
    it (`keep_ambiguous=True` gives it all of them, the old behaviour). Two chunks naming the same category
    ("two men", "people") get the same boxes; `filter_detections` with NMS on then keeps each box for the first
    of them only (equal scores keep the earlier detection).
    """
    by_cat: dict[str, list[list[float]]] = {}
    for label, box in annotations:
        by_cat.setdefault(label, []).append([float(v) for v in box])
    out = []
    for i, chunk in enumerate(chunks):
        text, lemma = (chunk.text, chunk.root_lemma) if hasattr(chunk, "root_lemma") else chunk
        boxes = by_cat.get(category_for(text, lemma) or "", ())
        if len(boxes) > 1 and not keep_ambiguous and is_singular(chunk):
            if drops is not None:
                drops["ambiguous_singular"] += 1
            continue
        for box in boxes:
            out.append(Detection(i, list(box), 1.0))
    return out


class Queries(NamedTuple):
    texts: list[str]           # distinct chunk texts, first-seen order: the detector's text queries
    chunks: list[list[int]]    # for each query, the chunk indices with that text


def detector_queries(chunk_texts: Sequence[str]) -> Queries:
    """Deduplicate chunk texts (case-insensitive) so one image asks the detector once per phrase."""
    index: dict[str, int] = {}
    texts, chunks = [], []
    for i, text in enumerate(chunk_texts):
        key = " ".join(text.lower().split())
        if key not in index:
            index[key] = len(texts)
            texts.append(text)
            chunks.append([])
        chunks[index[key]].append(i)
    return Queries(texts, chunks)


def detections_from_output(boxes: Sequence[Sequence[float]], scores: Sequence[float],
                           labels: Sequence[int], queries: Queries | int,
                           drops: Counter | None = None) -> list[Detection]:
    """Map one image's post-processed detector output to detections.

    `boxes` (pixel xyxy), `scores` and `labels` are CPU lists as transformers'
    `post_process_grounded_object_detection` / `post_process_object_detection` return them once
    moved off the device; `labels` index the text queries. `queries` is the `Queries` the
    detector was given (a label fans out to every chunk with that text) or, when the queries were
    the chunk texts themselves, their count. Out-of-range labels are counted as `bad_label`.
    """
    fan_out = queries.chunks if isinstance(queries, Queries) else [[i] for i in range(queries)]
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes/scores/labels lengths differ: {len(boxes)}/{len(scores)}/{len(labels)}")
    out = []
    for box, score, label in zip(boxes, scores, labels):
        q = int(label)
        if not 0 <= q < len(fan_out):
            if drops is not None:
                drops["bad_label"] += 1
            continue
        for chunk in fan_out[q]:
            out.append(Detection(chunk, [float(v) for v in box], float(score)))
    return out


class ImageQueries(NamedTuple):
    texts: list[str]                      # distinct chunk texts over all of an image's captions: the detector queries
    members: list[list[tuple[int, int]]]  # for each query, the (caption index, chunk index) pairs with that text
    n_captions: int


def image_queries(chunk_texts: Sequence[Sequence[str]]) -> ImageQueries:
    """One image's detector queries from all its captions: the union of their chunk texts (case- and
    blank-insensitive, first-seen order), so the image is decoded and run through the detector once however many
    captions it has. `chunk_texts[c]` are caption c's chunk texts."""
    index: dict[str, int] = {}
    texts: list[str] = []
    members: list[list[tuple[int, int]]] = []
    for c, caption_texts in enumerate(chunk_texts):
        for i, text in enumerate(caption_texts):
            key = " ".join(text.lower().split())
            if key not in index:
                index[key] = len(texts)
                texts.append(text)
                members.append([])
            members[index[key]].append((c, i))
    return ImageQueries(texts, members, len(chunk_texts))


def fan_out(detections: Iterable, queries: ImageQueries, drops: Counter | None = None) -> list[list[Detection]]:
    """One image's detections over the union queries -> each caption's detections over its own chunks.

    `detections` are `(query_index, box, score)` as the detector handler returns them when given
    `queries.texts`; the result has one list per caption, `Detection(chunk_index, box, score)` in detection
    order (so filter_detections breaks ties the same way as a per-caption run). Out-of-range query indices are
    counted as `bad_label`."""
    out: list[list[Detection]] = [[] for _ in range(queries.n_captions)]
    for det in detections:
        q, box, score = int(det[0]), [float(v) for v in det[1]], float(det[2])
        if not 0 <= q < len(queries.members):
            if drops is not None:
                drops["bad_label"] += 1
            continue
        for caption, chunk in queries.members[q]:
            out[caption].append(Detection(chunk, list(box), score))
    return out


def label_indices(text_labels: Sequence[str], query_texts: Sequence[str]) -> list[int]:
    """Query index for each text label, for detectors that return label text instead of ids
    (Grounding DINO returns the matched span of its prompt): the query with the same words, else
    the first query containing the label's words in order, else -1 (counted as `bad_label` by
    `detections_from_output`)."""
    queries = [_words(q) for q in query_texts]
    out = []
    for label in text_labels:
        words = _words(label)
        exact = [i for i, q in enumerate(queries) if q == words]
        inside = [i for i, q in enumerate(queries) if words and _contains_run(q, words)]
        out.append((exact or inside or [-1])[0])
    return out


def _contains_run(words: list[str], run: list[str]) -> bool:
    return any(words[i:i + len(run)] == run for i in range(len(words) - len(run) + 1))


class Filtered(NamedTuple):
    boxes: dict[int, list[tuple[list[float], float]]]  # chunk -> [(box, score)], best score first
    drops: Counter


def filter_detections(detections: Iterable, width: float, height: float, *,
                      n_chunks: int | None = None,
                      score_threshold: float | None = SCORE_THRESHOLD,
                      nms_iou: float | None = NMS_IOU,
                      max_area_frac: float | None = MAX_AREA_FRAC,
                      min_side: float | None = MIN_SIDE_PX,
                      min_area_frac: float | None = MIN_AREA_FRAC,
                      singular: Collection[int] | None = None) -> Filtered:
    """Kosmos-2 filters for one image, in this order: box validity (clipped to the image; invalid
    boxes counted under `boxes.BoxError` reasons), score > `score_threshold`, size (area fraction >
    `max_area_frac` is too large; a side < `min_side` px or area fraction < `min_area_frac` is too
    small), then greedy NMS over all chunks' boxes together at `nms_iou` (ties keep the earlier
    detection). Size runs before NMS so a whole-image box cannot suppress real ones. `singular`: indices of
    chunks that name one thing (`singular_chunks`); after the size filter each keeps only its best-scoring box
    (ties: the earlier detection), the others counted as `singular_extra_box`, so a detector never gives "a dog"
    three boxes; None keeps every box (`--keep-all-boxes`). A chunk with no box left is counted once as
    `no_box_left`; with `n_chunks`, chunks that had no detection at all count too. Any filter is off when its
    parameter is None.
    """
    drops: Counter = Counter()
    image_area = float(width) * float(height)
    kept: list[Detection] = []
    seen: set[int] = set(range(n_chunks)) if n_chunks is not None else set()
    for det in detections:
        chunk, box, score = int(det[0]), det[1], float(det[2])
        seen.add(chunk)
        try:
            box = checked_box(box, width, height)
        except BoxError as err:
            drops[err.reason] += 1
            continue
        if score_threshold is not None and not score > score_threshold:
            drops["score_below_threshold"] += 1
            continue
        frac = area(box) / image_area
        if max_area_frac is not None and frac > max_area_frac:
            drops["box_too_large"] += 1
            continue
        if ((min_side is not None and min(box[2] - box[0], box[3] - box[1]) < min_side)
                or (min_area_frac is not None and frac < min_area_frac)):
            drops["box_too_small"] += 1
            continue
        kept.append(Detection(chunk, box, score))
    if singular:
        best: dict[int, int] = {}
        for i, det in enumerate(kept):
            if det.chunk in singular and (det.chunk not in best or det.score > kept[best[det.chunk]].score):
                best[det.chunk] = i
        extra = [i for i, det in enumerate(kept) if det.chunk in best and best[det.chunk] != i]
        if extra:
            drops["singular_extra_box"] += len(extra)
            kept = [det for i, det in enumerate(kept) if det.chunk not in best or best[det.chunk] == i]
    if nms_iou is not None:
        order = nms([d.box for d in kept], [d.score for d in kept], nms_iou)
        drops["nms_suppressed"] += len(kept) - len(order)
    else:
        order = sorted(range(len(kept)), key=lambda i: (-kept[i].score, i))
    result: dict[int, list[tuple[list[float], float]]] = {}
    for i in order:
        result.setdefault(kept[i].chunk, []).append((kept[i].box, kept[i].score))
    no_box = len(seen - set(result))
    if no_box:
        drops["no_box_left"] += no_box
    return Filtered(dict(sorted(result.items())), +drops)


def filter_settings(**overrides) -> Mapping[str, float | None]:
    """The filter keyword arguments with their defaults, for run reports and CLI help."""
    settings = {"score_threshold": SCORE_THRESHOLD, "nms_iou": NMS_IOU, "max_area_frac": MAX_AREA_FRAC,
                "min_side": MIN_SIDE_PX, "min_area_frac": MIN_AREA_FRAC}
    unknown = set(overrides) - set(settings)
    if unknown:
        raise TypeError(f"unknown filter settings {sorted(unknown)}")
    settings.update(overrides)
    return settings
