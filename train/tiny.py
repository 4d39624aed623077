"""Random-weight Florence-2 models with an offline tokenizer, for tests and benchmarks (no hub access).

The tokenizer is a byte-level BPE trained with the `tokenizers` library on a few sentences, with
Florence-2's special tokens in Florence-2's order (<s>=0, <pad>=1, </s>=2, <unk>=3), `<loc_0>`..`<loc_999>`,
the task tokens and the `<image>` placeholder, wrapped in transformers' BART (Roberta) tokenizer.
`save_random_florence2` writes model + processor with save_pretrained, so the code under test loads them
exactly as it would load a hub checkpoint.
"""
from __future__ import annotations

import json

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
TASK_TOKENS = (
    "<OCR>", "<OCR_WITH_REGION>", "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>",
    "<DENSE_REGION_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>", "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<REGION_TO_SEGMENTATION>", "<OPEN_VOCABULARY_DETECTION>", "<REGION_TO_CATEGORY>",
    "<REGION_TO_DESCRIPTION>", "<REGION_TO_OCR>", "<REGION_PROPOSAL>",
    "<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>", "<sep>",
)
CORPUS = (
    "Locate the phrases in the caption: a man riding a horse next to a red car.",
    "Locate the objects with category name in the image.",
    "What does the region describe? What is the region? How many people are in the image?",
    "the woman on the left, the dog under the table, two cats and a bicycle, person, dog, cat, car",
    'Count the objects: {"person": 2, "dog": 1, "car": 3} 0 1 2 3 4 5 6 7 8 9 10',
    "What does the image describe? Describe in detail what is shown in the image.",
)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(CORPUS) * 4, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges, bos_token="<s>", eos_token="</s>",
                           sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                           mask_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    tok.add_tokens([f"<loc_{i}>" for i in range(1000)] + list(TASK_TOKENS), special_tokens=True)
    return tok


def build_processor(image_size: int = 32, image_seq_length: int | None = None, tokenizer=None):
    """Florence2Processor with a CLIP image processor resizing to image_size x image_size.

    image_seq_length defaults to the tiny model's: one stage of stride 4 -> (size/4)^2 + 1 tokens."""
    from transformers import CLIPImageProcessorPil, Florence2Processor

    if image_seq_length is None:
        image_seq_length = (image_size // 4) ** 2 + 1
    image_processor = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=False, image_seq_length=image_seq_length,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer or build_tokenizer())


def _text_config(vocab: int, d_model: int, layers: int, heads: int, ffn: int, positions: int, dropout: float):
    return {"model_type": "bart", "vocab_size": vocab, "max_position_embeddings": positions,
            "encoder_layers": layers, "decoder_layers": layers, "encoder_attention_heads": heads,
            "decoder_attention_heads": heads, "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn, "d_model": d_model,
            "dropout": dropout, "attention_dropout": 0.0, "activation_dropout": 0.0, "activation_function": "gelu",
            "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2,
            "forced_eos_token_id": 2, "scale_embedding": False}


def tiny_config(tokenizer, d_model: int = 32, dropout: float = 0.0):
    """The shape of transformers' own Florence-2 test model: one vision stage, one BART layer each side."""
    from transformers import Florence2Config

    text = _text_config(len(tokenizer), d_model, layers=1, heads=2, ffn=2 * d_model, positions=256,
                        dropout=dropout)
    vision = {"depths": [1], "patch_size": [7], "patch_stride": [4], "patch_padding": [3],
              "patch_prenorm": [False], "embed_dim": [16], "num_heads": [1], "num_groups": [1],
              "window_size": 4, "drop_path_rate": 0.0, "projection_dim": d_model}
    return Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)


def base_config(tokenizer):
    """Florence-2-base's architecture (DaViT 1-1-9-1, BART 6+6 x 768; 0.23 B parameters), random weights."""
    from transformers import Florence2Config

    text = _text_config(max(51289, len(tokenizer)), 768, layers=6, heads=12, ffn=3072, positions=1024,
                        dropout=0.1)
    vision = {"depths": [1, 1, 9, 1], "patch_size": [7, 3, 3, 3], "patch_stride": [4, 2, 2, 2],
              "patch_padding": [3, 1, 1, 1], "patch_prenorm": [False, True, True, True],
              "embed_dim": [128, 256, 512, 1024], "num_heads": [4, 8, 16, 32], "num_groups": [4, 8, 16, 32],
              "window_size": 12, "drop_path_rate": 0.1, "projection_dim": 768}
    return Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)


def save_random_florence2(path: str, size: str = "tiny", seed: int = 0, image_size: int | None = None,
                          dropout: float = 0.0) -> str:
    """Write a random-weight Florence-2 (`tiny` or `base`) and its processor to `path`; returns `path`.
    `dropout` (tiny only) makes training draw from the RNG, for resume tests."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    tokenizer = build_tokenizer()
    if size == "tiny":
        processor = build_processor(image_size or 32, tokenizer=tokenizer)
        config = tiny_config(tokenizer, dropout=dropout)
    elif size == "base":
        processor = build_processor(image_size or 768, image_seq_length=577, tokenizer=tokenizer)
        config = base_config(tokenizer)
    else:
        raise ValueError(f"size must be tiny or base, got {size!r}")
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
