"""Load a model of a supported family (train.families) and its processor, freeze the vision tower, wrap in
LoRA, save."""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

# BART layers of the language model (encoder and decoder): attention projections and the MLP.
# The vision tower (DaViT) has its own fc1/fc2, so the pattern is anchored on `language_model`.
LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def adapter_base(path: str) -> str:
    with open(os.path.join(path, ADAPTER_CONFIG)) as f:
        return json.load(f)["base_model_name_or_path"]


def load_processor(name: str, trust_remote_code: bool = False, family=None):
    from transformers import AutoProcessor

    from groundforge.train import families

    family = family or _family_or_none(name, trust_remote_code)
    if family is not None and family.name in ("qwen2_vl", "qwen2_5_vl"):
        return families.load_qwen_processor(family.name, name, trust_remote_code)
    return AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)


def _family_or_none(name: str, trust_remote_code: bool):
    from groundforge.train import families

    try:
        return families.detect(name, trust_remote_code)
    except (ValueError, OSError):
        return None


def load_model(name: str, trust_remote_code: bool = False, adapter_trainable: bool = False):
    """Florence-2 from a hub id or directory. A directory holding a LoRA adapter loads its base model
    and the adapter on top (trainable with adapter_trainable, to resume training). Remote model code is
    used only with trust_remote_code."""
    if os.path.isdir(name) and is_adapter_dir(name):
        from peft import PeftModel

        base = load_model(adapter_base(name), trust_remote_code)
        return PeftModel.from_pretrained(base, name, is_trainable=adapter_trainable)
    if trust_remote_code:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True)
    from groundforge.train import families

    return families.model_class(families.detect(name)).from_pretrained(name)


VISION_MODULES = ("vision_tower", "visual", "vision_model")


def vision_tower(model):
    """The vision tower module (Florence-2's DaViT, PaliGemma's SigLIP `vision_tower`, Qwen's `visual`,
    Kosmos-2's CLIP `vision_model`), of native, remote-code and peft-wrapped models alike."""
    best = None
    for name, module in model.named_modules():
        if name.split(".")[-1] in VISION_MODULES and (best is None or len(name) < len(best[0])):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no vision_tower module")
    return best[1]


def freeze_vision(model) -> int:
    """Set requires_grad=False on every vision tower parameter; returns how many tensors were frozen.

    (Setting an attribute such as `param.is_trainable = False`, as some public notebooks do, changes
    nothing: autograd and the optimizer only look at requires_grad.)
    """
    params = list(vision_tower(model).parameters())
    for p in params:
        p.requires_grad_(False)
    return len(params)


def apply_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.05, targets: str = LORA_TARGETS):
    """Wrap in a peft LoRA adapter on the language model's attention projections and MLP (`targets`, the
    family's; default Florence-2's q/k/v/out_proj and fc1/fc2). Everything else, the vision tower included,
    is frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def max_positions(model) -> int | None:
    """The language model's position limit (encoder and decoder), from the config."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def save(model, processor, path: str) -> None:
    """save_pretrained for model (or LoRA adapter) and processor into `path`."""
    from groundforge.train.families import save_qwen_processor

    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    if type(processor).__name__ in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor"):
        save_qwen_processor(processor, path)
    else:
        processor.save_pretrained(path)


def resolve_device(name: str = "auto", local_rank: int = 0):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def resolve_amp_dtype(name: str, device):
    """Autocast dtype, or None for plain fp32. Weights stay fp32 (master weights) either way."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"--dtype must be auto, fp32, bf16 or fp16, got {name!r}")
    if table[name] is torch.float16 and device.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return table[name]
