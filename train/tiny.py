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


# ---------------------------------------------------------------- PaliGemma, Qwen2-VL / Qwen2.5-VL, Kosmos-2
# Tiny random-weight models of the other families, with tokenizers built offline in each family's own
# tokenizer class (v5 tokenizers take vocab/merges directly) and the family's own processor, which adds
# its special tokens (PaliGemma <loc0000>.., Kosmos-2 <patch_index_0000>..) as the released ones have them.

# Qwen/Qwen2-VL-2B-Instruct tokenizer_config.json "chat_template", verbatim (real checkpoints ship their own)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == "
    "'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                 "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _chars() -> list[str]:
    import string

    return [c for c in string.printable if c not in " \t\n\r\x0b\x0c"]


def _byte_level_bpe(specials, vocab_size: int = 400):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(CORPUS) * 4, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    return bpe.get_vocab(), merges


def build_paligemma_processor(image_size: int = 28, patch: int = 14):
    """PaliGemmaProcessor: a character-level GemmaTokenizer (Gemma's <pad>=0 <eos>=1 <bos>=2 <unk>=3 and byte
    fallback tokens) and a SigLIP image processor; the processor adds <image>, <loc0000>..<loc1023>, <seg...>."""
    from transformers import GemmaTokenizer, PaliGemmaProcessor, SiglipImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + ["▁"] + _chars() + ["\n"] + [f"<0x{b:02X}>" for b in range(256)]
    tokenizer = GemmaTokenizer(vocab={t: i for i, t in enumerate(pieces)}, merges=[])
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                           image_seq_length=(image_size // patch) ** 2)
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_random_paligemma(path: str, seed: int = 0, dropout: float = 0.0) -> str:
    import torch
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    processor = build_paligemma_processor()
    tok = processor.tokenizer
    config = PaliGemmaConfig(
        text_config={"model_type": "gemma2", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                     "max_position_embeddings": 512, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
                     "attention_dropout": dropout, "query_pre_attn_scalar": 16, "sliding_window": 256},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                       "projection_dim": 32},
        image_token_id=processor.image_token_id, projection_dim=32, pad_token_id=0)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    _set_generation_ids(model, bos=2, eos=1, pad=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_qwen_processor(version: str = "2.5"):
    """Qwen2-VL / Qwen2.5-VL processor: a byte-level BPE Qwen2Tokenizer with Qwen's special tokens, the
    Qwen2-VL image processor (patch 14, merge 2: 28-pixel factor) and Qwen2-VL's chat template."""
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessorPil

    from groundforge.train.families import build_qwen_processor as assemble

    vocab, merges = _byte_level_bpe(["<|endoftext|>"])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS)})
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    name = "qwen2_5_vl" if version == "2.5" else "qwen2_vl"
    return assemble(name, image_processor, tokenizer, QWEN2_VL_CHAT_TEMPLATE)


def save_random_qwen(path: str, version: str = "2.5", seed: int = 0, dropout: float = 0.0) -> str:
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    from groundforge.train.families import save_qwen_processor

    processor = build_qwen_processor(version)
    tok = processor.tokenizer
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
                                                        ("video_token_id", "<|video_pad|>"),
                                                        ("vision_start_token_id", "<|vision_start|>"),
                                                        ("vision_end_token_id", "<|vision_end|>"))}
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
            "attention_dropout": dropout, "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 10000.0}}
    if version == "2.5":
        vision = {"depth": 1, "hidden_size": 16, "out_hidden_size": 32, "num_heads": 2, "intermediate_size": 32,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3,
                  "fullatt_block_indexes": [0], "window_size": 56}
        config, cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids), Qwen2_5_VLForConditionalGeneration
    else:
        vision = {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
                  "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3}
        config, cls = Qwen2VLConfig(text_config=text, vision_config=vision, **ids), Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config)
    _set_generation_ids(model, bos=pad, eos=eos, pad=pad)
    model.save_pretrained(path)
    save_qwen_processor(processor, path)
    return path


def build_kosmos2_processor(image_size: int = 28):
    """Kosmos2Processor: a character-level (Unigram) XLMRobertaTokenizer with XLM-R's <s>=0 <pad>=1 </s>=2
    <unk>=3 and a CLIP image processor; the processor adds <grounding>, <phrase>, <object>, <patch_index_*>."""
    from transformers import CLIPImageProcessorPil, Kosmos2Processor, XLMRobertaTokenizer

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in _chars()] + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=pieces)
    image_processor = CLIPImageProcessorPil(size={"height": image_size, "width": image_size},
                                            crop_size={"height": image_size, "width": image_size},
                                            do_center_crop=False)
    return Kosmos2Processor(image_processor, tokenizer)


def save_random_kosmos2(path: str, seed: int = 0, dropout: float = 0.0) -> str:
    import torch
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    processor = build_kosmos2_processor()
    config = Kosmos2Config(
        text_config={"vocab_size": len(processor.tokenizer), "embed_dim": 32, "layers": 1, "attention_heads": 2,
                     "ffn_dim": 64, "max_position_embeddings": 512, "dropout": dropout,
                     "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        latent_query_num=64)    # Kosmos2Processor's image token count
    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(config)
    _set_generation_ids(model, bos=0, eos=2, pad=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _set_generation_ids(model, bos: int, eos: int, pad: int) -> None:
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = bos, eos, pad


SAVERS = {"florence2": save_random_florence2, "paligemma": save_random_paligemma,
          "qwen2vl": lambda path, **kw: save_random_qwen(path, "2", **kw),
          "qwen25vl": lambda path, **kw: save_random_qwen(path, "2.5", **kw), "kosmos2": save_random_kosmos2}


def save_random(fmt: str, path: str, **kw) -> str:
    """A random-weight tiny model of the family that trains on `fmt` shards."""
    return SAVERS[fmt](path, **kw)
