"""Shared test helpers (the one module tests import from): tiny COCO datasets, a CLI runner, output readers,
and tiny random-weight detector / Florence-2 checkpoints built offline."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

FAST_BEAM = ["--direct_running_mode=in_memory"]

logging.getLogger("apache_beam").setLevel(logging.ERROR)


def jpeg_bytes(width: int, height: int, color=(200, 30, 30), exif_orientation: int | None = None) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (width, height), color)
    img.paste((20, 20, 220), (0, 0, width // 2, height // 2))  # top-left quadrant blue: orientation is visible
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None,
               name: str = "instances.json") -> Path:
    """images: [{id, file_name, width, height, bytes?}]; writes the image bytes under root/images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for img in images:
        data = img.pop("bytes", None)
        if data is None and not img.get("skip_file"):
            data = jpeg_bytes(img["width"], img["height"])
        img.pop("skip_file", None)
        if data is not None:
            path = root / "images" / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        entries.append(img)
    categories = categories or [{"id": 1, "name": "dog", "supercategory": "animal"},
                                {"id": 2, "name": "cat", "supercategory": "animal"}]
    path = root / name
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def run_cli(args: list[str], expect_exit: int | None = 0):
    from click.testing import CliRunner
    from groundforge.pipeline.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if expect_exit is not None:
        assert result.exit_code == expect_exit, result.output
    return result


def build_cli(builder: str, tmp_path: Path, args, name: str = "out", expect_exit: int | None = 0):
    """Run `groundforge build <builder> ... --out tmp_path/name` on the in-memory runner -> (out, result)."""
    out = tmp_path / name
    result = run_cli(["build", builder, *args, "--out", out, *FAST_BEAM], expect_exit=expect_exit)
    return out, result


def info_of(out: Path) -> dict:
    return json.loads((out / "dataset_info.json").read_text())


def read_rows(out: Path, sub: str = "data") -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((out / sub).glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


# Words the tiny tokenizer knows whole; any other lower-case text still tokenizes, char by char.
WORDS = ("a", "an", "the", "dog", "dogs", "cat", "cats", "two", "red", "couch", "remote", "in", "on", "and",
         "of", "field", "flowers", "wire", "hanger", "paper", "cover", "person", "man", "woman", "sofa")
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?"


def write_clip_bpe(directory: Path, words=WORDS) -> None:
    """vocab.json + merges.txt of a tiny CLIP BPE: single chars, `</w>` ends, merges spelling `words`.
    Like CLIP, pad is "!" (id 0) and <|startoftext|>/<|endoftext|> are the two highest ids (OWL pools the
    text at the argmax id, i.e. at end-of-text)."""
    vocab: dict[str, int] = {"!": 0}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def make_owlv2(directory: Path, full: bool = False, seed: int = 0) -> Path:
    """Save a random-weight OWLv2 + processor to `directory` (no download).

    Tiny (default): 2-layer 32-wide towers, 64x64 input, 16 px patches (16 boxes per image), 16-token text.
    `full=True`: Owlv2Config() defaults with 960 px vision input, the size of google/owlv2-base-patch16 (3600 boxes),
    with the tiny tokenizer (ids stay inside the full 49408-token embedding).
    """
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2Processor,
    )
    try:
        from transformers import Owlv2ImageProcessor as ImageProcessor
        ImageProcessor()  # needs torchvision
    except ImportError:
        from transformers.models.owlv2.image_processing_pil_owlv2 import (
            Owlv2ImageProcessorPil as ImageProcessor,
        )

    directory = Path(directory)
    write_clip_bpe(directory / "tok")
    vocab = json.loads((directory / "tok" / "vocab.json").read_text())
    text_len = 16
    tokenizer = CLIPTokenizer.from_pretrained(directory / "tok", pad_token="!", model_max_length=text_len)
    if full:  # Owlv2Config()'s vision tower defaults to 768 px; google/owlv2-base-patch16 runs at 960
        config = Owlv2Config(vision_config={"image_size": 960})
        image_processor = ImageProcessor()
    else:
        config = Owlv2Config(
            text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=text_len,
                             bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                             pad_token_id=0),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                               image_size=64, patch_size=16),
            projection_dim=32)
        image_processor = ImageProcessor(size={"height": 64, "width": 64})
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():  # boxes = the patch-grid prior (see module docstring)
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    out = directory / "owlv2"
    model.save_pretrained(out)
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def make_grounding_dino(directory: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight Grounding DINO (Swin + BERT, 10 queries) with a word-level BERT vocab."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    directory = Path(directory)
    (directory / "tok").mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list(WORDS) + list(CHARS.replace(".", ""))
    (directory / "tok" / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer.from_pretrained(directory / "tok")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                   image_size=32, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=37, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, max_text_len=32,
        encoder_n_points=2, decoder_n_points=2)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    out = directory / "grounding_dino"
    model.save_pretrained(out)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def make_florence2(directory: Path, answer: str | None = None, seed: int = 0) -> Path:
    """Save a tiny random-weight Florence-2 in transformers' native format: byte-level BPE tokenizer with the
    image token and the 1000 <loc_i> tokens, 32x32 input (4x4 patches + 1 pooled = 17 image tokens).

    With `answer`, the saved generation config carries a `sequence_bias` of +100 on each prefix of
    `</s>answer</s>`, so greedy or beam generation writes exactly `answer` whatever the image and prompt.
    """
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        BartConfig,
        BartTokenizer,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        GenerationConfig,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.florence2.configuration_florence2 import (
        Florence2VisionConfig,
    )

    directory = Path(directory)
    (directory / "tok").mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in ByteLevel.alphabet():
        vocab.setdefault(c, len(vocab))
    (directory / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (directory / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = BartTokenizer.from_pretrained(directory / "tok", extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)])
    image_processor = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False,
                                            image_seq_length=17)
    vision = Florence2VisionConfig(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                                   patch_prenorm=[False, True], embed_dim=[8, 16], num_heads=[1, 2],
                                   num_groups=[1, 2], window_size=2, projection_dim=32, max_position_embeddings=8,
                                   drop_path_rate=0.0)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
                      max_position_embeddings=256, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      decoder_start_token_id=2)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(
        Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)).eval()
    out = directory / "florence2"
    model.save_pretrained(out)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    if answer is not None:
        seq = [text.decoder_start_token_id] + tokenizer(answer, add_special_tokens=False).input_ids + [2]
        generation = GenerationConfig.from_pretrained(out)
        generation.sequence_bias = [[seq[:k + 1], 100.0] for k in range(1, len(seq))]
        generation.save_pretrained(out)
    return out


def grid_boxes(width: int, height: int, cells: int = 4) -> list[list[float]]:
    """OWLv2's box prior in pixels: centres on the patch grid's corner coordinates (k+1)/cells, boxes
    1/cells of the padded square side."""
    s = max(width, height) / cells
    return [[(k + 0.5) * s, (j + 0.5) * s, (k + 1.5) * s, (j + 1.5) * s]
            for j in range(cells) for k in range(cells)]


def same_boxes(got, want, tol=0.05) -> bool:  # float32 sigmoid round trip: ~1e-4 of the side
    key = lambda b: tuple(round(v, 1) for v in b)  # noqa: E731
    got, want = sorted(got, key=key), sorted(want, key=key)
    return len(got) == len(want) and all(
        all(abs(a - b) <= tol for a, b in zip(g, w)) for g, w in zip(got, want))


def reader_view(rows) -> list:
    """A reader's output (items and `Rejected`, see pipeline/readers/common.py) as plain dicts: a reject becomes
    its row with "reject": True, so tests compare whole rows."""
    from groundforge.pipeline.readers.common import Rejected

    return [{"reject": True, **r.row} if isinstance(r, Rejected) else r for r in rows]


def reader_pairs(rows, item: str = "item") -> list:
    """A reader's output as (kind, value) pairs: (item, dict), ("reject", row) for read rejects and
    ("annotation_reject", row) for rejects of other stages."""
    from groundforge.pipeline.readers.common import Rejected

    return [(("reject" if r.stage == "read" else "annotation_reject"), r.row) if isinstance(r, Rejected) else (item, r)
            for r in rows]


def tiny_florence2_processor():
    """A real Florence2Processor with a tiny word-level tokenizer (no hub download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast
    from transformers.models.florence2.processing_florence2 import Florence2Processor

    tok = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil()
    image_processor.image_seq_length = 577
    parse_tasks = ["ocr", "phrase_grounding", "pure_text", "description_with_bboxes", "description_with_polygons",
                   "polygons", "bboxes", "description_with_bboxes_or_polygons"]
    return Florence2Processor(image_processor=image_processor, tokenizer=fast,
                              post_processor_config={t: {} for t in parse_tasks})


def tiny_kosmos2_processor(words=(), prepend_scheme: str = "first"):
    """A real Kosmos2Processor over a tiny sentencepiece-style (Unigram + Metaspace) tokenizer built offline;
    the processor adds its tag and patch-index tokens itself. Words not in `words` fall back to characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast
    from transformers.models.kosmos2.processing_kosmos2 import Kosmos2Processor

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'-\u2581"))
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in dict.fromkeys(words)] + [(w, -2.0) for w in dict.fromkeys(words)]
    vocab += [(c, -8.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    return Kosmos2Processor(image_processor=CLIPImageProcessorPil(), tokenizer=fast)


def rewrite_shard(out: Path, change, index: int = 0) -> Path:
    """Tamper with OUT/data's index-th shard consistently: rows = change(rows), written with the same schema,
    and its sha256/rows updated in dataset_info.json (so only the content is wrong)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    info = info_of(out)
    entry = info["shards"][index]
    path = out / entry["file"]
    table = pq.read_table(path)
    rows = change(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    info["rows"] += len(rows) - entry["rows"]
    entry["rows"] = len(rows)
    (out / "dataset_info.json").write_text(json.dumps(info))
    return path


def write_multi_caption_coco(root: Path) -> tuple[Path, Path, Path]:
    """A COCO-style captions + instances pair with five captions per image (COCO's layout): shared and
    differently-cased phrases across an image's captions, one image the instances file does not cover, one
    image file missing, one image whose annotation size is wrong. -> (captions.json, instances.json, images)."""
    root = Path(root)
    images = [{"id": 139, "file_name": "000000000139.jpg", "width": 96, "height": 64},
              {"id": 285, "file_name": "000000000285.jpg", "width": 64, "height": 80},
              {"id": 632, "file_name": "000000000632.jpg", "width": 80, "height": 80},
              {"id": 724, "file_name": "000000000724.jpg", "width": 64, "height": 64, "skip_file": True},
              {"id": 776, "file_name": "000000000776.jpg", "width": 72, "height": 48}]
    sizes = {776: (60, 48)}  # the file is 60x48: size_mismatch for each of its captions
    for img in images:
        if img["id"] in sizes:
            img["bytes"] = jpeg_bytes(*sizes[img["id"]])
    boxes = {139: [(1, [4, 6, 30, 40]), (1, [50, 10, 30, 30]), (3, [10, 2, 20, 50])],
             285: [(2, [5, 5, 40, 50])], 724: [(2, [1, 1, 20, 20])], 776: [(1, [2, 2, 20, 20])]}
    anns = [{"id": 900 + i, "image_id": image_id, "category_id": cat, "bbox": box, "area": box[2] * box[3],
             "iscrowd": 0} for i, (image_id, cat, box) in enumerate(
                 (image_id, cat, box) for image_id, bs in boxes.items() for cat, box in bs)]
    categories = [{"id": 1, "name": "dog", "supercategory": "animal"},
                  {"id": 2, "name": "cat", "supercategory": "animal"},
                  {"id": 3, "name": "person", "supercategory": "person"}]
    covered = [dict(img) for img in images if img["id"] != 632]  # 632: captioned, not in the instances file
    for img in covered:
        img.pop("bytes", None)
        img["skip_file"] = True
    instances = write_coco(root, covered, anns, categories)
    captions = {139: ["Two dogs and a man in a park.", "A man plays with two dogs on the grass.",
                      "two dogs run next to a person", "A person with his dogs.", "The dogs chase a man."],
                285: ["A cat sits on a couch.", "a cat on a couch", "A gray cat resting.",
                      "The cat looks at the camera.", "A cat."],
                632: ["A dog sleeping.", "a dog on a bed", "A dog."],
                724: ["A cat in a box.", "a cat", "The cat sleeps."],
                776: ["A dog on a beach.", "a dog runs", "The dog plays."]}
    write_coco(root, images, [], categories, name="images.json")
    cap_anns = [{"id": 5000 + 10 * image_id + i, "image_id": image_id, "caption": text}
                for image_id, texts in captions.items() for i, text in enumerate(texts)]
    entries = json.loads((root / "images.json").read_text())["images"]
    path = root / "captions.json"
    path.write_text(json.dumps({"images": entries, "annotations": cap_anns}))
    return path, instances, root / "images"
