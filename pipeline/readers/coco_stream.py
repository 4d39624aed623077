"""A large COCO JSON file (instances, captions) read by a streaming parser (ijson), never as one bytes object and
one parsed tree. `read_json_object` is the one place that decides how such a file is read (counting, GRIT).

`json.loads` of instances_train2017.json (448 MB) holds the file's bytes, its decoded text and the whole tree
at once: several GB in one worker. `stream_coco` reads the file twice through ijson's C backend: a first pass
over the parse events checks the shape (an object at the top, no repeated top-level key, nesting at most
MAX_DEPTH deep), a second builds only the top-level values (`kvitems`). The result is the same dict that
`parse_coco` makes, so `image_items` yields the same items and rejects. Anything odd (malformed JSON, another
encoding, NaN, deep nesting, a repeated key, no ijson) returns None and the caller reads the whole file as before,
so malformed files are rejected with the whole-file reader's reason and detail.
"""
from __future__ import annotations

from groundforge.pipeline import fs
from groundforge.pipeline.readers.common import loads_json

STREAM_MIN_BYTES = 16 * 1024 * 1024   # smaller files: json.loads, which is faster
MAX_DEPTH = 64                          # COCO is 4 deep; anything deeper goes to the whole-file reader


def read_json_object(path: str):
    """The parsed JSON file: streamed when it is over STREAM_MIN_BYTES and plain (see `stream_coco`), else (and for
    anything odd) through the whole-file reader, which raises ValueError for malformed JSON."""
    try:
        big = fs.size(path) > STREAM_MIN_BYTES
    except OSError:
        big = False
    data = stream_coco(lambda: fs.open_read(path)) if big else None
    return data if data is not None else loads_json(fs.read_bytes(path))


def stream_coco(open_file) -> dict | None:
    """The COCO file's top-level object read with ijson, or None when the whole-file reader must decide.
    `open_file()` returns a new binary file object each time it is called (the file is read twice)."""
    try:
        import ijson
    except ImportError:
        return None
    try:
        with open_file() as f:
            if not _plain_shape(ijson.basic_parse(f, use_float=True)):
                return None
        with open_file() as f:
            return dict(ijson.kvitems(f, "", use_float=True))
    except (ijson.JSONError, ValueError, UnicodeDecodeError):
        return None


def _plain_shape(events) -> bool:
    """An object at the top with distinct keys, nested at most MAX_DEPTH deep, one document."""
    depth, keys, first, done = 0, set(), True, False
    for event, value in events:
        if done:
            return False
        if first:
            if event != "start_map":
                return False
            first = False
        if event in ("start_map", "start_array"):
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif event in ("end_map", "end_array"):
            depth -= 1
            done = depth == 0
        elif event == "map_key" and depth == 1:
            if value in keys:
                return False
            keys.add(value)
    return done
