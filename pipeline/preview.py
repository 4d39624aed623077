"""`groundforge preview`: an HTML page of sampled records, to look at the data as a model will see it.

Records are sampled across every (split, task), preferring records with boxes; the page groups them by split
and task and filters them in the browser (no server). Each card shows the image twice: the canonical boxes
of `objects`, and what `target` (the prompt, for `reg`) decodes to for the record's format, with a badge
saying whether the two agree, so a rendering bug is visible at a glance. Any record that cannot be shown
(image missing, path refused, bytes that do not decode) becomes a card saying why, with its boxes drawn
on a blank canvas of the record's size.
"""
from __future__ import annotations

import base64
import hashlib
import heapq
import html
import io
import json
import os
import re
from collections import Counter

import click
from groundforge.pipeline.command import HELP
from groundforge.pipeline.shards import InfoError, iter_rows, listed_path, load_info
from groundforge.transforms.codecs import find_special_tokens
from groundforge.transforms.images import ImageError
from groundforge.transforms.paths import PathError

THUMB = 304          # panel size: images are scaled (up or down) to fit THUMB x THUMB, shown at 1:1 in the page
FONT_PX = 14         # label font size in panel pixels (= CSS pixels)
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
           "#469990", "#800000", "#808000", "#000075"]
SCAN_COLUMNS = ["id", "split", "task", "objects"]


class PreviewError(click.ClickException):
    """A one-line error for the user (exit 1)."""


# ---------------------------------------------------------------------------------------------------------
# sampling

def sample_rows(out_dir: str, n: int, seed: int) -> list[dict]:
    """n records spread over every (split, task) of the output, round-robin, each group in the order of a
    seeded hash of the key (deterministic) with records that have boxes first (three in four picks while
    both kinds remain). Only n candidates per group are kept while the cheap columns are scanned."""
    info = load_info(out_dir)
    heaps: dict[tuple, dict[bool, list]] = {}
    for shard in info["shards"]:
        for row in _rows(out_dir, shard["file"], SCAN_COLUMNS):
            rank = hashlib.sha256(f"{seed}:{row['id']}".encode()).hexdigest()
            group = heaps.setdefault((row["split"], row["task"]), {True: [], False: []})
            heap = group[bool(row["objects"])]
            item = (_neg(rank), shard["file"], row["id"])
            if len(heap) < n:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    ordered = {key: _mixed(sorted(g[True], reverse=True), sorted(g[False], reverse=True))
               for key, g in sorted(heaps.items())}
    chosen = []
    while len(chosen) < n and any(ordered.values()):
        for key in ordered:
            if ordered[key] and len(chosen) < n:
                chosen.append(ordered[key].pop(0))
    wanted = {(f, i) for _, f, i in chosen}
    rows = {}
    for file in sorted({f for _, f, _ in chosen}):
        for row in _rows(out_dir, file, None):
            if (file, row["id"]) in wanted:
                rows[file, row["id"]] = row
    return sorted((rows[f, i] for _, f, i in chosen), key=lambda r: (r["split"], r["task"], r["id"]))


def _neg(hex_rank: str) -> str:
    """A string that sorts in the reverse order of hex_rank (the heap keeps the n smallest ranks)."""
    return hex_rank.translate(str.maketrans("0123456789abcdef", "fedcba9876543210"))


def _mixed(with_boxes: list, without: list) -> list:
    out = []
    while with_boxes or without:
        take_empty = without and (not with_boxes or len(out) % 4 == 3)
        out.append((without if take_empty else with_boxes).pop(0))
    return out


def _rows(out_dir: str, file: str, columns):
    try:
        yield from iter_rows(listed_path(out_dir, file), columns=columns)
    except PathError as err:
        raise PreviewError(f"{file}: {err.reason}; not read") from None
    except Exception as exc:  # pyarrow's many types for a damaged file
        raise PreviewError(f"{file}: cannot be read ({_one_line(exc)}); run `groundforge validate`") from None


def _one_line(exc: Exception) -> str:
    return re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}")[:300]


# ---------------------------------------------------------------------------------------------------------
# what the target says

def decoded_target(row: dict):
    """(kind, value): ("boxes", [(label, box)]) for box tasks (reg: the box in the prompt), ("counts", dict or
    None) for counting, ("count", int or None) for count_class, or ("error", message)."""
    from groundforge.transforms.codecs import get_codec
    from groundforge.transforms.templates import parse_output

    task, fmt, w, h = row["task"], row["format"], row["width"], row["height"]
    try:
        if task == "reg":
            codec = get_codec(fmt)
            found = codec.decode(row["prompt"], w, h)
            m = re.search(r"\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]", row["prompt"])
            if not found and fmt == "qwen25vl" and m:  # a bare [x1, y1, x2, y2] in the resized frame
                found = codec.decode(json.dumps([{"bbox_2d": json.loads(m.group(0))}]), w, h)
            return "boxes", [("prompt box", box) for _, box in found]
        value = parse_output(task, fmt, row["target"], w, h, meta=row.get("meta"))
    except Exception as exc:  # a tampered or unknown task/format
        return "error", _one_line(exc)
    if task == "counting":
        return "counts", value
    if task == "count_class":
        return "count", value
    return "boxes", [(str(label), list(box)) for label, box in value]


def agreement(row: dict, kind: str, value) -> tuple[bool, str]:
    """Whether the decoded target agrees with `objects`, and a short line saying so."""
    from groundforge.transforms.boxes import iou

    objects = row.get("objects") or []
    if kind == "error":
        return False, f"target does not decode: {value}"
    if kind == "counts":
        want = {k: v for k, v in Counter(o["label"] for o in objects).items() if v}
        if value is None:
            return False, "target is not a JSON object of counts"
        got = {k: v for k, v in value.items() if v}
        return got == want, ("target counts match objects" if got == want else f"target {got} but objects {want}")
    if kind == "count":
        name = _meta(row).get("class")
        want = sum(1 for o in objects if o["label"] == name) if name else len(objects)
        if value == want:
            return True, f"target {value} = {want} {name or 'objects'} in objects"
        return False, f"target {value} but objects have {want} {name or ''}".rstrip()
    boxes = [o["bbox"] for o in objects]
    free = list(range(len(value)))
    for box in boxes:
        best = max(free, key=lambda j: iou(box, value[j][1]), default=None)
        if best is None or iou(box, value[best][1]) < 0.5:
            break
        free.remove(best)
    else:
        if not free:
            return True, f"target decodes to the {len(boxes)} object box{'es' if len(boxes) != 1 else ''}"
    return False, f"target decodes to {len(value)} box(es) for {len(boxes)} object(s), not the same boxes"


def _meta(row: dict) -> dict:
    try:
        meta = json.loads(row.get("meta") or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------------------------
# drawing

def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # scalable (FreeType) in Pillow >= 10.1


def _text_color(hex_color: str) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def label_box(text_w: int, text_h: int, box, size: tuple[int, int], pad: int = 3) -> tuple[int, int, int, int]:
    """Where a label goes: its background rectangle [x1, y1, x2, y2], above the box when there is room, else
    just inside its top edge, always inside the image (the text is shortened first when it is wider)."""
    W, H = size
    w, h = text_w + 2 * pad, text_h + 2 * pad
    x = min(max(0, int(box[0])), max(0, W - w))
    y = int(box[1]) - h if box[1] - h >= 0 else int(box[1])
    y = min(max(0, y), max(0, H - h))
    return x, y, x + w, y + h


def _fit(draw, text: str, font, max_w: int) -> str:
    if draw.textlength(text, font=font) <= max_w:
        return text
    while text and draw.textlength(text + "…", font=font) > max_w:
        text = text[:-1]
    return text + "…"


def draw_panel(img, items: list[tuple[str, list]], labels: list[str], scale: float, heading: str):
    """Boxes (pixel xyxy of the record, drawn at `scale`) with readable labels on a copy of the panel."""
    from PIL import ImageDraw

    img = img.copy()
    draw = ImageDraw.Draw(img)
    font = _font(FONT_PX)
    W, H = img.size
    line = max(2, round(min(W, H) / 160))
    for label, box in items:
        color = _color(labels.index(label) if label in labels else len(labels))
        x1, y1, x2, y2 = (v * scale for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line)
    for label, box in items:  # labels over every box
        color = _color(labels.index(label) if label in labels else len(labels))
        text = _fit(draw, label or "(no label)", font, W - 8)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x1, y1, x2, y2 = label_box(right - left, bottom - top, [v * scale for v in box], (W, H))
        draw.rectangle([x1, y1, x2, y2], fill=color)
        draw.text((x1 + 3 - left, y1 + 3 - top), text, fill=_text_color(color), font=font)
    return _with_heading(img, heading, font)


def _with_heading(img, text: str, font):
    """The panel under a white strip that names it."""
    from PIL import Image, ImageDraw

    strip = FONT_PX + 8
    out = Image.new("RGB", (img.width, img.height + strip), "#ffffff")
    out.paste(img, (0, strip))
    draw = ImageDraw.Draw(out)
    draw.text((2, 4), _fit(draw, text, font, img.width - 4), fill="#222222", font=font, anchor="la")
    return out


def base_image(row: dict, data: bytes | None):
    """(panel image, scale) for the record: its picture fitted into THUMB x THUMB, or, without usable bytes,
    a grey canvas of its size (the boxes still show where they are)."""
    from PIL import Image

    w, h = max(1, int(row.get("width") or 1)), max(1, int(row.get("height") or 1))
    scale = THUMB / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if data is None:
        return Image.new("RGB", size, (205, 205, 205)), scale
    from groundforge.transforms.images import decode_image

    img = decode_image(data).convert("RGB")  # allowed formats only; EXIF orientation applied
    if img.size != (w, h):  # a record whose size disagrees with its image: draw in the image's frame
        scale = THUMB / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.LANCZOS), scale


def card_image(row: dict, data: bytes | None, kind: str, value) -> bytes:
    """One JPEG: the objects panel, and beside it the decoded-target panel for box tasks."""
    from PIL import Image

    base, scale = base_image(row, data)
    objects = [(o["label"], o["bbox"]) for o in row.get("objects") or []]
    labels = sorted({label for label, _ in objects})
    panels = [draw_panel(base, objects, labels, scale, f"objects: {len(objects)}")]
    if kind == "boxes":
        panels.append(draw_panel(base, value, labels, scale, f"target decodes to: {len(value)}"))
    gap = 8
    out = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), "#ffffff")
    for i, panel in enumerate(panels):
        out.paste(panel, (i * (panel.width + gap), 0))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# the page

def image_bytes(row: dict, image_root: str | None) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, why the image cannot be shown)."""
    from groundforge.pipeline.image_files import load_image

    image = row.get("image") or {}
    if image.get("bytes"):
        return image["bytes"], None
    path = image.get("path")
    if not path:
        return None, "the record has neither image bytes nor a path"
    if not image_root:
        return None, f"image not embedded ({path}); pass --image-root"
    try:
        return load_image(image_root, path)[0], None
    except PathError as err:
        return None, f"image path refused ({err.reason}): {path}"
    except ImageError as err:
        if err.reason == "missing_image":
            return None, f"image not found under --image-root: {path}"
        return None, f"image not shown ({err.reason}): {path}"


def code_html(text: str) -> str:
    """Escaped text with control tokens marked (never broken inside) and line breaks allowed between them."""
    out, pos = [], 0
    for tok in _tokens(text):
        start = text.index(tok, pos)
        out.append(_breakable(text[pos:start]))
        out.append(f'<span class="tok">{html.escape(tok)}</span><wbr>')
        pos = start + len(tok)
    out.append(_breakable(text[pos:]))
    return "".join(out)


def _tokens(text: str) -> list[str]:
    return find_special_tokens(text or "")


def _breakable(text: str) -> str:
    return html.escape(text).replace(",", ",<wbr>")


def card_html(row: dict, image_root: str | None) -> str:
    data, problem = image_bytes(row, image_root)
    kind, value = decoded_target(row)
    ok, verdict = agreement(row, kind, value)
    try:
        img = base64.b64encode(card_image(row, data, kind, value)).decode()
    except ImageError as err:  # embedded bytes that do not decode
        problem = f"image does not decode ({err.reason})"
        img = base64.b64encode(card_image(row, None, kind, value)).decode()
    meta = _meta(row)
    e = html.escape
    if kind == "counts":
        verdict_value = f"<p><b>target decodes to</b> <code>{e(json.dumps(value, ensure_ascii=False))}</code></p>"
    elif kind == "count":
        verdict_value = f"<p><b>target decodes to</b> <code>{e(str(value))}</code></p>"
    else:
        verdict_value = ""
    lines = [
        f'<div class="card" data-split="{e(row["split"])}" data-task="{e(row["task"])}">',
        f'<p class="meta">{e(row["dataset"])} / <b>{e(row["split"])}</b> / <b>{e(row["task"])}</b> / '
        f'{e(row["format"])} / image {e(str(row["image_id"]))} ({row["width"]}x{row["height"]}) / '
        f'{e(str(meta.get("template", "")))}</p>',
        f'<p class="problem">{e(problem)}</p>' if problem else "",
        f'<img src="data:image/jpeg;base64,{img}" alt="{e(row["id"])}">',
        f'<p class="verdict {"ok" if ok else "bad"}">{"✓" if ok else "✗"} {e(verdict)}</p>',
        verdict_value,
        f'<p><b>prompt</b> <code>{code_html(row["prompt"])}</code></p>',
        f'<p><b>target</b> <code>{code_html(row["target"])}</code></p>',
        f'<p><b>caption</b> {e(row["caption"])}</p>' if row.get("caption") else "",
        "</div>",
    ]
    return "\n".join(x for x in lines if x)


def _error_card(row: dict, exc: Exception) -> str:
    e = html.escape
    return (f'<div class="card" data-split="{e(str(row.get("split")))}" data-task="{e(str(row.get("task")))}">'
            f'<p class="problem">record {e(str(row.get("id")))} cannot be shown: {e(_one_line(exc))}</p></div>')


STYLE = """body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa}
.bar{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd;z-index:1}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
h2.group{flex-basis:100%;margin:.6em 0 0;font-size:1.1em}
.card{width:640px;border:1px solid #ccc;background:#fff;padding:8px;box-sizing:border-box}
.card img{max-width:100%;height:auto;display:block}
.meta{color:#555;font-size:small;margin:0 0 6px}
.problem{color:#a00;font-weight:bold}
.verdict.ok{color:#176117}.verdict.bad{color:#b00;font-weight:bold}
code{white-space:pre-wrap;overflow-wrap:anywhere;background:#f3f3f3;padding:1px 3px}
.tok{white-space:nowrap;color:#8a2be2}
.hidden{display:none}"""

SCRIPT = """function applyFilter(){
  var s=document.getElementById('split').value, t=document.getElementById('task').value, shown=0;
  document.querySelectorAll('.card').forEach(function(c){
    var on=(!s||c.dataset.split===s)&&(!t||c.dataset.task===t); c.classList.toggle('hidden',!on); if(on)shown++;});
  document.querySelectorAll('h2.group').forEach(function(h){
    h.classList.toggle('hidden',!((!s||h.dataset.split===s)&&(!t||h.dataset.task===t)));});
  document.getElementById('shown').textContent=shown;}"""


def _select(name: str, values: list[str]) -> str:
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
    return f'<label>{name} <select id="{name}" onchange="applyFilter()"><option value="">all</option>{options}</select></label>'


def preview_html(rows: list[dict], title: str, image_root: str | None, info: dict | None = None) -> str:
    """The page: filters by split and task, then the cards grouped by (split, task) with a heading each."""
    groups: dict[tuple, list[str]] = {}
    for row in rows:
        try:
            card = card_html(row, image_root)
        except Exception as exc:  # a record too damaged to draw still gets a card saying so
            card = _error_card(row, exc)
        groups.setdefault((str(row.get("split")), str(row.get("task"))), []).append(card)
    totals = {}
    for split, entry in ((info or {}).get("splits") or {}).items():
        for task, count in (entry.get("tasks") or {}).items():
            totals[split, task] = count
    body = []
    for (split, task), cards in sorted(groups.items()):
        total = f" of {totals[split, task]}" if (split, task) in totals else ""
        body.append(f'<h2 class="group" data-split="{html.escape(split)}" data-task="{html.escape(task)}">'
                    f'{html.escape(split)} / {html.escape(task)}: {len(cards)}{total}</h2>')
        body.extend(cards)
    splits = sorted({s for s, _ in groups})
    tasks = sorted({t for _, t in groups})
    e = html.escape
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{e(title)}</h1>
<div class="bar">{_select("split", splits)} {_select("task", tasks)} <span id="shown">{len(rows)}</span> of {len(rows)}
sampled records shown. Left: the canonical boxes in <code>objects</code>; right: what <code>target</code> decodes to
(<code>reg</code>: the box in the prompt).</div>
<div class="grid">
{chr(10).join(body)}
</div></body></html>
"""


def _check_html_path(html_path: str) -> None:
    folder = os.path.dirname(os.path.abspath(html_path))
    if not os.path.isdir(folder):
        raise PreviewError(f"cannot write {html_path}: folder {folder} does not exist")


@click.command("preview", context_settings=HELP)
@click.argument("out_dir", metavar="DATASET")
@click.option("--out", "html_path", default="preview.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (its folder must exist).")
@click.option("--n", type=click.IntRange(1), default=24, show_default=True, help="How many records to show.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the record sample.")
@click.option("--image-root", default=None, help="Where image paths resolve for --image-mode path outputs.")
def preview_cmd(out_dir, html_path, n, seed, image_root):
    """Write an HTML page of N records sampled across splits and tasks: boxes of `objects` beside what the
    target decodes to, prompt and target under each, filters by split and task."""
    _check_html_path(html_path)
    if image_root and "://" not in image_root and not os.path.isdir(image_root):
        raise PreviewError(f"--image-root {image_root} is not a folder")
    try:
        info = load_info(out_dir)
        rows = sample_rows(out_dir, n, seed)
    except FileNotFoundError as err:
        raise PreviewError(str(err)) from None
    except InfoError as err:
        raise PreviewError(f"{err}; run `groundforge validate {out_dir}`") from None
    page = preview_html(rows, f"groundforge preview: {out_dir}", image_root, info)
    try:
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as err:
        raise PreviewError(f"cannot write {html_path}: {err.strerror or err}") from None
    click.echo(f"wrote {html_path} ({len(rows)} records)")
