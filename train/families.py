"""Model families: which transformers classes load a checkpoint, which shard format it trains on, how a
batch is built (labels on the answer only), what LoRA targets and which module is the vision tower.

The family is detected from the checkpoint's config (`model_type`); it must match the format the shards
were rendered for, so Florence-2 never trains on Kosmos-2 markup, and so on.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Family:
    name: str                 # as in --model's config model_type
    title: str
    formats: tuple            # shard formats it trains on
    model_class: str          # transformers class
    vision: str               # name of the vision tower module
    lora_targets: str         # peft target_modules regex (the language model's projections)
    decoder_only: bool        # generation returns prompt + answer (sliced off before decoding)
    collator: str             # class in train.collate


_LLAMA_LIKE = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
FAMILIES = {
    "florence2": Family("florence2", "Florence-2", ("florence2",), "Florence2ForConditionalGeneration",
                        "vision_tower", r".*language_model\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)", False,
                        "Florence2Collator"),
    "paligemma": Family("paligemma", "PaliGemma / PaliGemma 2", ("paligemma",), "PaliGemmaForConditionalGeneration",
                        "vision_tower", r".*language_model\..*\." + _LLAMA_LIKE, True, "PaliGemmaCollator"),
    "qwen2_vl": Family("qwen2_vl", "Qwen2-VL", ("qwen2vl",), "Qwen2VLForConditionalGeneration", "visual",
                       r".*language_model\..*\." + _LLAMA_LIKE, True, "QwenVLCollator"),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2.5-VL", ("qwen25vl",), "Qwen2_5_VLForConditionalGeneration", "visual",
                         r".*language_model\..*\." + _LLAMA_LIKE, True, "QwenVLCollator"),
    "kosmos-2": Family("kosmos-2", "Kosmos-2", ("kosmos2",), "Kosmos2ForConditionalGeneration", "vision_model",
                       r".*text_model\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)", True, "Kosmos2Collator"),
}


def _config_path_model_type(path: str) -> str | None:
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            return json.load(f).get("model_type")
    return None


def detect(name: str, trust_remote_code: bool = False) -> Family:
    """The family of a hub id or directory (a LoRA adapter directory: of its base model)."""
    adapter = os.path.join(name, ADAPTER_CONFIG)
    if os.path.isdir(name) and os.path.isfile(adapter):
        with open(adapter) as f:
            return detect(json.load(f)["base_model_name_or_path"], trust_remote_code)
    model_type = _config_path_model_type(name) if os.path.isdir(name) else None
    if model_type is None:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code).model_type
    family = FAMILIES.get(model_type)
    if family is None:
        known = ", ".join(f.title for f in FAMILIES.values())
        raise ValueError(f"--model {name}: model type {model_type!r} is not a supported family ({known})")
    return family


def check_format(family: Family, fmt: str | None, where: str) -> None:
    if fmt is not None and fmt not in family.formats:
        raise ValueError(f"{where} is rendered for format {fmt!r}, but --model is {family.title}, which trains on "
                         f"`{family.formats[0]}` shards (`groundforge render --format {family.formats[0]}`)")


def model_class(family: Family):
    import transformers

    return getattr(transformers, family.model_class)


def make_collator(family: Family, processor, **kw):
    from groundforge.train import collate

    return getattr(collate, family.collator)(processor, **kw)


# ---------------------------------------------------------------- Qwen processors without torchvision

def build_qwen_processor(family_name: str, image_processor, tokenizer, chat_template: str, video_processor=None):
    """Qwen2-VL / Qwen2.5-VL processor. transformers builds its video processor with torchvision; without
    torchvision (images only) the processor is assembled with no video processor."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    cls = Qwen2_5_VLProcessor if family_name == "qwen2_5_vl" else Qwen2VLProcessor
    if video_processor is not None:
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                   chat_template=chat_template)
    check = ProcessorMixin.check_argument_for_proper_class

    def lenient(self, name, arg):
        return None if name == "video_processor" and arg is None else check(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = lenient
    try:
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                   chat_template=chat_template)
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


CHAT_TEMPLATE_FILE = "chat_template.jinja"


def save_qwen_processor(processor, path: str) -> None:
    """save_pretrained without a video processor: tokenizer, image processor and chat template."""
    if getattr(processor, "video_processor", None) is not None:
        processor.save_pretrained(path)
        return
    os.makedirs(path, exist_ok=True)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    with open(os.path.join(path, CHAT_TEMPLATE_FILE), "w") as f:
        f.write(processor.chat_template)


def load_qwen_processor(family_name: str, name: str, trust_remote_code: bool = False):
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (ImportError, AttributeError, ValueError, TypeError, OSError):
        pass   # no torchvision for the video processor: assemble the image-only processor
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    template = getattr(tokenizer, "chat_template", None)
    local = os.path.join(name, CHAT_TEMPLATE_FILE)
    if os.path.isfile(local):
        with open(local) as f:
            template = f.read()
    if not template:
        raise ValueError(f"{name}: no chat template (chat_template.jinja or the tokenizer's)")
    return build_qwen_processor(family_name, image_processor, tokenizer, template)
