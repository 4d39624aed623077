"""The embedded sample: 50 simple deterministic scenes with COCO boxes, captions and refer-style expressions.

`python -m groundforge.pipeline.sample [DIR]` regenerates pipeline/sample_data/ (committed, so builds never depend on
this script): images/*.jpg, instances.json (COCO detection), captions.json (COCO captions) and
refcoco/refs(unc).p + refcoco/instances.json (the lichengunc/refer layout, pickle protocol 2), and docvqa/
(six synthetic documents and {train,val}_v1.0.json in the original DocVQA layout; `python -m
groundforge.pipeline.sample DIR docvqa` writes only that part).
"""
from __future__ import annotations

import io
import json
import pickle
import random
import sys
from pathlib import Path

SAMPLE_DIR = Path(__file__).with_name("sample_data")
N_IMAGES = 50
SIZE = (320, 240)
CATEGORIES = [  # real COCO ids and supercategories
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (17, "cat", "animal"),
    (18, "dog", "animal"), (37, "sports ball", "sports"), (47, "cup", "kitchen"), (63, "couch", "furniture"),
]
NOUNS = {"person": ["man", "woman", "person", "boy", "girl"], "bicycle": ["bicycle", "bike"], "car": ["car"],
         "cat": ["cat", "kitten"], "dog": ["dog", "puppy"], "sports ball": ["ball"], "cup": ["cup", "mug"],
         "couch": ["couch", "sofa"]}
PLURALS = {"man": "men", "woman": "women", "person": "people", "boy": "boys", "girl": "girls", "puppy": "puppies"}
COLORS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "yellow": (230, 200, 40),
          "white": (235, 235, 235), "black": (30, 30, 30), "brown": (130, 80, 40)}
PLACES = [("a green field", (120, 180, 110)), ("a gray street", (150, 150, 150)),
          ("a beige room", (225, 210, 180)), ("a sandy beach", (230, 215, 160))]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
SPLITS = ["train"] * 35 + ["val"] * 5 + ["testA"] * 5 + ["testB"] * 5


def _scene(rng: random.Random, image_id: int) -> dict:
    n = rng.randint(1, 4)
    slot_w = SIZE[0] // n
    objects = []
    for i in range(n):
        cat_id, cat, _ = rng.choice(CATEGORIES)
        w = rng.randint(max(24, slot_w // 3), max(30, slot_w - 12))
        h = rng.randint(40, 150)
        x = i * slot_w + rng.randint(4, max(5, slot_w - w - 4))
        y = rng.randint(6, SIZE[1] - h - 6)
        color = rng.choice(list(COLORS))
        objects.append({"category_id": cat_id, "cat": cat, "noun": rng.choice(NOUNS[cat]), "color": color,
                        "bbox": [x, y, w, h]})
    place, bg = rng.choice(PLACES)
    return {"id": image_id, "objects": objects, "place": place, "bg": bg}


def _draw(scene: dict) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", SIZE, scene["bg"])
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        x, y, w, h = obj["bbox"]
        shape = draw.ellipse if obj["cat"] in ("sports ball", "cat", "dog") else draw.rectangle
        shape([x, y, x + w - 1, y + h - 1], fill=COLORS[obj["color"]], outline=(0, 0, 0))
        draw.text((x + 3, y + 3), obj["noun"], fill=(0, 0, 0) if obj["color"] != "black" else (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _caption(scene: dict) -> str:
    groups: dict[str, list[dict]] = {}
    for obj in scene["objects"]:
        groups.setdefault(obj["noun"], []).append(obj)
    phrases = []
    for noun, objs in groups.items():
        if len(objs) == 1:
            art = "an" if objs[0]["color"][0] in "aeiou" else "a"
            phrases.append(f"{art} {objs[0]['color']} {noun}")
        else:
            phrases.append(f"{NUMBER_WORDS[len(objs)]} {PLURALS.get(noun, noun + 's')}")
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{body} in {scene['place']}"


def _position(obj: dict) -> str:
    cx = obj["bbox"][0] + obj["bbox"][2] / 2
    return "left" if cx < SIZE[0] / 3 else ("right" if cx > 2 * SIZE[0] / 3 else "middle")


def _expressions(rng: random.Random, obj: dict) -> list[str]:
    pos = _position(obj)
    forms = [f"the {obj['color']} {obj['noun']} on the {pos}", f"{obj['color']} {obj['noun']}",
             f"{obj['noun']} in the {pos}", f"The {obj['color'].capitalize()} {obj['noun']}  on the {pos}"]
    picked = rng.sample(forms[:3], rng.randint(1, 3))
    if rng.random() < 0.3:
        picked.append(forms[3])  # same as forms[0] after case/space normalisation: exercises dedupe
    return picked


def generate(out: Path = SAMPLE_DIR) -> None:
    rng = random.Random(20241121)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refcoco").mkdir(parents=True, exist_ok=True)
    images, anns, caps, refs = [], [], [], []
    ann_id, sent_id = 1000, 0
    for k in range(N_IMAGES):
        image_id = 100 + k
        scene = _scene(rng, image_id)
        name = f"{image_id:012d}.jpg"
        (out / "images" / name).write_bytes(_draw(scene))
        images.append({"id": image_id, "file_name": name, "width": SIZE[0], "height": SIZE[1], "license": 1})
        caps.append({"id": 5000 + k, "image_id": image_id, "caption": _caption(scene)})
        for obj in scene["objects"]:
            ann_id += 1
            x, y, w, h = obj["bbox"]
            anns.append({"id": ann_id, "image_id": image_id, "category_id": obj["category_id"],
                         "bbox": [float(v) for v in obj["bbox"]], "area": float(w * h), "iscrowd": 0})
            sentences = []
            for raw in _expressions(rng, obj):
                sentences.append({"tokens": raw.lower().split(), "raw": raw, "sent_id": sent_id,
                                  "sent": " ".join(raw.lower().split())})
                sent_id += 1
            refs.append({"sent_ids": [s["sent_id"] for s in sentences], "file_name": f"{name[:-4]}_{ann_id}.jpg",
                         "ann_id": ann_id, "ref_id": len(refs), "image_id": image_id, "split": SPLITS[k],
                         "sentences": sentences, "category_id": obj["category_id"]})
    # One crowd region (a crowd of people), as COCO has: counting must not ask about people in that image.
    anns.append({"id": 9999, "image_id": 100 + N_IMAGES - 1, "category_id": 1, "bbox": [0.0, 200.0, 320.0, 40.0],
                 "area": 12800.0, "iscrowd": 1})
    categories = [{"id": i, "name": n, "supercategory": s} for i, n, s in CATEGORIES]
    licenses = [{"id": 1, "name": "CC BY 4.0 (groundforge synthetic sample)",
                 "url": "https://creativecommons.org/licenses/by/4.0/"}]
    instances = {"info": {"description": "groundforge synthetic sample", "version": "1.0"}, "licenses": licenses,
                 "images": images, "annotations": anns, "categories": categories}
    _write_json(out / "instances.json", instances)
    _write_json(out / "captions.json", {"info": instances["info"], "licenses": licenses, "images": images,
                                        "annotations": caps})
    _write_json(out / "refcoco" / "instances.json", instances)
    with open(out / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------- DocVQA sample (the original DocVQA JSON layout)

DOCVQA_DIR = SAMPLE_DIR / "docvqa"
DOCVQA_SAMPLE_JSON = DOCVQA_DIR / "*_v1.0.json"  # train_v1.0.json and val_v1.0.json, as the DocVQA release names them
DOC_SIZE = (400, 520)

# Synthetic documents (the ucsf ids are made up, in the style of the real ones): each is
# (split, docId, ucsf_document_id, page, image extension, title, body lines, questions), a question being
# (questionId, question, answers, question_types).
DOCVQA_DOCS = [
    ("train", 4101, "gfxd0001", "1", "png", "MEMORANDUM",
     ["TO: Dr. Helen Park", "FROM: R. J. Adams", "DATE: March 3, 1998", "SUBJECT: Budget review",
      "", "Please send the revised budget", "for the Q2 study by Friday."],
     [(51001, "Who is the memo addressed to?", ["Dr. Helen Park", "Helen Park"], ["layout"]),
      (51002, "What is the date of the memo?", ["March 3, 1998", "3/3/98"], ["layout"]),
      (51003, "What is the subject of the memo?", ["Budget review"], ["form"])]),
    ("train", 4102, "gfxd0002", "2", "png", "INVOICE No. 7731",
     ["Bill to: Lorillard Corp.", "Item            Qty   Amount", "Paper (A4)       10   $45.00",
      "Toner             2   $120.00", "TOTAL                $165.00"],
     [(51004, "What is the invoice number?", ["7731"], ["layout"]),
      (51005, "What is the total amount?", ["$165.00", "165.00"], ["table/list"]),
      (51006, "How many toner units were billed?", ["2"], ["table/list"])]),
    ("train", 4103, "gfxd0003", "1", "jpg", "FAX COVER SHEET",
     ["To: Quality Control", "Fax: (336) 741-5000", "Pages: 4 (including cover)", "Urgent: YES"],
     [(51007, "How many pages are in the fax?", ["4", "4 (including cover)"], ["form"]),
      (51008, "Is the fax urgent?", ["yes"], ["form", "Yes/No"])]),
    ("train", 4104, "gfxd0004", "3", "png", "RESEARCH REPORT",
     ["Table 2. Test results", "Sample   Nicotine (mg)", "A-12      0.81", "B-07      1.02",
      "", "Prepared by the R&D Department"],
     [(51009, "What is the nicotine value for sample B-07?", ["1.02", "1.02 mg"], ["table/list"])]),
    ("val", 4201, "gfxd0005", "1", "jpg", "MEETING AGENDA",
     ["Place: Room 4B, Winston-Salem", "Time: 10:30 a.m.", "1. Opening remarks", "2. Sales figures"],
     [(52001, "Where is the meeting held?", ["Room 4B, Winston-Salem", "Room 4B"], ["layout"]),
      (52002, "At what time does the meeting start?", ["10:30 a.m.", "10:30"], ["form"])]),
    ("val", 4202, "gfxd0006", "5", "png", "ORDER FORM",
     ["Name: J. Smith", "Brand: Newport", "Cartons: 12", "Signature: J. Smith"],
     [(52003, "How many cartons were ordered?", ["12", "twelve"], ["form"])]),
]


def _draw_document(title: str, lines: list[str], ext: str) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", DOC_SIZE, (250, 248, 240))
    draw = ImageDraw.Draw(img)
    big, small = ImageFont.load_default(size=22), ImageFont.load_default(size=15)
    draw.text((24, 24), title, fill=(10, 10, 10), font=big)
    draw.line([(24, 58), (DOC_SIZE[0] - 24, 58)], fill=(60, 60, 60), width=2)
    y = 76
    for line in lines:
        draw.text((24, y), line, fill=(25, 25, 25), font=small)
        y += 26
    draw.rectangle([(20, DOC_SIZE[1] - 44), (DOC_SIZE[0] - 20, DOC_SIZE[1] - 20)], outline=(120, 120, 120))
    draw.text((28, DOC_SIZE[1] - 40), "groundforge synthetic sample - not a UCSF document", fill=(90, 90, 90),
              font=ImageFont.load_default(size=11))
    buf = io.BytesIO()
    if ext == "jpg":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def generate_docvqa(out: Path = DOCVQA_DIR) -> None:
    """The DocVQA sample: documents/*.png|jpg and {train,val}_v1.0.json in the original release's layout."""
    (out / "documents").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {}
    for split, doc_id, ucsf, page, ext, title, lines, questions in DOCVQA_DOCS:
        image = f"documents/{ucsf}_{page}.{ext}"
        (out / image).write_bytes(_draw_document(title, lines, ext))
        for question_id, question, answers, types in questions:
            splits.setdefault(split, []).append({
                "questionId": question_id, "question": question, "question_types": types, "image": image,
                "docId": doc_id, "ucsf_document_id": ucsf, "ucsf_document_page_no": page, "answers": answers,
                "data_split": split})
    for split, data in splits.items():
        _write_json(out / f"{split}_v1.0.json", {"dataset_name": "docvqa", "dataset_split": split,
                                                 "dataset_version": "1.0", "data": data})


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE_DIR
    if len(sys.argv) > 2 and sys.argv[2] == "docvqa":  # only the DocVQA sample: the rest stays byte-identical
        generate_docvqa(target / "docvqa")
    else:
        generate(target)
        generate_docvqa(target / "docvqa")
    print(f"wrote sample to {target}", file=sys.stderr)
