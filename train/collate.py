"""Batch records for Florence-2: processor for images and prompts, tokenizer for targets."""
from __future__ import annotations

from collections import Counter

from groundforge.train.data import TAIL

IGNORE_INDEX = -100


class Florence2Collator:
    """records (dicts with image, prompt, target) -> model inputs.

    Labels are the tokenized target (`<s> ... </s>`, as Florence-2 generates after its `</s>` decoder
    start token), with padding set to -100 so it is ignored by the loss. Targets longer than
    `max_target_length` tokens are truncated; so are encoder inputs (image tokens first, then the prompt)
    longer than `max_source_length`. `with_labels=False` batches prompts only (generation).

    The batch also carries `truncated` ({"prompt"|"target": n} records cut in this batch), `skipped`
    ({reason: n}, records the stream skipped before these samples) and the
    resume position (`slot`, `pos`) of its last sample. A batch of only a stream's tail marker has
    `inputs` None.

    Florence-2 builds its decoder inputs from the labels (shifted right after the `</s>` decoder start
    token, -100 read as padding), so no decoder_input_ids are passed.
    """

    def __init__(self, processor, max_target_length: int = 1024, with_labels: bool = True,
                 keep_records: bool = False, max_source_length: int | None = None):
        self.processor = processor
        self.max_target_length = max_target_length
        self.max_source_length = max_source_length
        self.with_labels = with_labels
        self.keep_records = keep_records

    def __call__(self, samples: list[dict]) -> dict:
        skipped = Counter()
        for s in samples:
            skipped.update(s.pop("_skipped", {}))
        samples = [s for s in samples if not s.get(TAIL)]
        if not samples:
            return {"inputs": None, "ids": [], "records": [], "skipped": dict(skipped)}
        inputs = self.processor(text=[s["prompt"] for s in samples], images=[s["image"] for s in samples],
                                padding="longest", return_tensors="pt")
        truncated = Counter()
        if self.max_source_length and inputs["input_ids"].shape[1] > self.max_source_length:
            # counted on the untruncated batch, then cut as the tokenizer cuts (its EOS kept)
            lengths = inputs["attention_mask"].sum(1)
            truncated["prompt"] = int((lengths > self.max_source_length).sum())
            inputs = self.processor(text=[s["prompt"] for s in samples], images=[s["image"] for s in samples],
                                    padding="longest", return_tensors="pt", truncation=True,
                                    max_length=self.max_source_length)
        inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")}
        if self.with_labels:
            inputs["labels"], n = self.labels_and_truncated([s["target"] for s in samples])
            if n:
                truncated["target"] = n
        batch = {"inputs": inputs, "ids": [s["id"] for s in samples], "skipped": dict(skipped),
                 "truncated": dict(truncated)}
        if "_slot" in samples[-1]:
            batch["slot"] = samples[-1]["_slot"]
            batch["pos"] = samples[-1]["_pos"]
        if self.keep_records:
            batch["records"] = samples
        return batch

    def labels(self, targets: list[str]):
        return self.labels_and_truncated(targets)[0]

    def labels_and_truncated(self, targets: list[str]):
        """(labels, number of targets cut to max_target_length tokens)."""
        tok = self.processor.tokenizer(targets, padding="longest", return_tensors="pt",
                                       return_token_type_ids=False)
        n = int((tok["attention_mask"].sum(1) > self.max_target_length).sum())
        if n:
            tok = self.processor.tokenizer(targets, padding="longest", truncation=True,
                                           max_length=self.max_target_length, return_tensors="pt",
                                           return_token_type_ids=False)
        return tok["input_ids"].masked_fill(tok["attention_mask"] == 0, IGNORE_INDEX), n


# ---------------------------------------------------------------- decoder-only families

class _CausalCollator:
    """Shared batching for the decoder-only families (PaliGemma, Qwen2-VL/2.5-VL, Kosmos-2): the loss is on
    the answer only (image, prompt and padding are -100). Targets longer than max_target_length tokens are
    cut (and counted). Generation batches are padded on the left, as batched generation needs."""

    def __init__(self, processor, max_target_length: int = 1024, with_labels: bool = True,
                 keep_records: bool = False, max_source_length: int | None = None):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_target_length = max_target_length
        self.with_labels = with_labels
        self.keep_records = keep_records

    def __call__(self, samples: list[dict]) -> dict:
        skipped = Counter()
        for s in samples:
            skipped.update(s.pop("_skipped", {}))
        samples = [s for s in samples if not s.get(TAIL)]
        if not samples:
            return {"inputs": None, "ids": [], "records": [], "skipped": dict(skipped)}
        truncated = Counter()
        self.tokenizer.padding_side = "right" if self.with_labels else "left"
        if self.with_labels:
            targets = []
            for s in samples:
                target, cut = self.cut(s["target"])
                truncated["target"] += cut
                targets.append(target)
            inputs = self.encode_train(samples, targets)
        else:
            inputs = self.encode_prompt(samples)
        batch = {"inputs": inputs, "ids": [s["id"] for s in samples], "skipped": dict(skipped),
                 "truncated": {k: v for k, v in truncated.items() if v}}
        if "_slot" in samples[-1]:
            batch["slot"] = samples[-1]["_slot"]
            batch["pos"] = samples[-1]["_pos"]
        if self.keep_records:
            batch["records"] = samples
        return batch

    def cut(self, target: str) -> tuple[str, int]:
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        limit = self.max_target_length - 1       # room for the end-of-answer token
        if len(ids) <= limit:
            return target, 0
        return self.tokenizer.decode(ids[:limit]), 1

    def images(self, samples: list[dict]) -> list:
        return [s["image"] for s in samples]

    def encode_prompt(self, samples: list[dict]) -> dict:
        raise NotImplementedError

    def encode_train(self, samples: list[dict], targets: list[str]) -> dict:
        raise NotImplementedError

    @staticmethod
    def mask_prefix(input_ids, attention_mask, starts: list[int], ends: list[int] | None = None):
        """Labels = input_ids inside [start, end) of each row (right padding), -100 elsewhere."""
        import torch

        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, start in enumerate(starts):
            end = int(attention_mask[i].sum()) if ends is None else ends[i]
            labels[i, start:end] = input_ids[i, start:end]
        return labels


class PaliGemmaCollator(_CausalCollator):
    """PaliGemma / PaliGemma 2: the processor's `suffix` builds the labels (big_vision's prefix-LM
    fine-tuning: image tokens, <bos>, prompt, `\\n` are the prefix; the suffix and its <eos> are learned);
    token_type_ids tell the model which tokens are prefix (full attention) and which suffix (causal)."""

    KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")

    def texts(self, samples):
        # one <image> per text, as the processor asks; it expands it and adds <bos> and the prompt's `\n`
        return [self.processor.image_token + s["prompt"] for s in samples]

    def encode_prompt(self, samples):
        out = self.processor(text=self.texts(samples), images=self.images(samples), padding="longest",
                             return_tensors="pt")
        return {k: v for k, v in out.items() if k in self.KEYS}

    def encode_train(self, samples, targets):
        out = self.processor(text=self.texts(samples), images=self.images(samples), suffix=targets,
                             padding="longest", return_tensors="pt")
        inputs = {k: v for k, v in out.items() if k in self.KEYS}
        labels = out["labels"]
        inputs["labels"] = labels.masked_fill(out["attention_mask"] == 0, IGNORE_INDEX)
        return inputs


class Kosmos2Collator(_CausalCollator):
    """Kosmos-2 as a causal LM: `<s><image>..</image>` + prompt (`<grounding>...`) + answer + `</s>`, loss on
    the answer and `</s>` only. The prompt's token count is measured by processing the prompt alone, and
    checked to be a prefix of the full sequence."""

    KEYS = ("input_ids", "attention_mask", "image_embeds_position_mask", "pixel_values")

    def encode_prompt(self, samples):
        out = self.processor(text=[s["prompt"] for s in samples], images=self.images(samples), padding="longest",
                             return_tensors="pt")
        return {k: v for k, v in out.items() if k in self.KEYS}

    def encode_train(self, samples, targets):
        eos = self.tokenizer.eos_token
        full = self.processor(text=[s["prompt"] + t + eos for s, t in zip(samples, targets)],
                              images=self.images(samples), padding="longest", return_tensors="pt")
        prompts = self.processor(text=[s["prompt"] for s in samples], images=self.images(samples),
                                 padding="longest", return_tensors="pt")
        starts = [int(m.sum()) for m in prompts["attention_mask"]]
        for i, start in enumerate(starts):
            if full["input_ids"][i, :start].tolist() != prompts["input_ids"][i, :start].tolist():
                raise ValueError(f"record {samples[i]['id']}: the prompt does not tokenize to a prefix of "
                                 "prompt + target; cannot mask the prompt")
        inputs = {k: v for k, v in full.items() if k in self.KEYS}
        inputs["labels"] = self.mask_prefix(full["input_ids"], full["attention_mask"], starts)
        return inputs


class QwenVLCollator(_CausalCollator):
    """Qwen2-VL / Qwen2.5-VL through the processor's chat template: user turn = image + prompt, assistant
    turn = target; the loss is on the assistant answer and its `<|im_end|>` only (system, user turn, the
    `<|im_start|>assistant\\n` header and the trailing newline are -100), as in Qwen's and ms-swift's SFT.

    For `qwen25vl` shards the image is resized to the frame its coordinates were rendered in (the record's
    meta["frame"] width/height, else the codec's frame for its size) and the image processor is told not to
    resize again, so the pixels the model sees are the ones the answer's absolute coordinates refer to."""

    KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    END = "<|im_end|>"

    def __init__(self, processor, **kw):
        super().__init__(processor, **kw)
        ip = getattr(processor, "image_processor", None)
        self.merge = int(getattr(ip, "merge_size", 2) or 2)
        self.factor = int(getattr(ip, "patch_size", 14) or 14) * self.merge

    def images(self, samples):
        out = []
        for s in samples:
            img = s["image"]
            if s.get("format") == "qwen25vl":
                w, h = qwen25vl_frame(s)
                if img.size != (w, h):
                    img = img.resize((w, h), resample=3)   # bicubic, as qwen-vl-utils' fetch_image
            out.append(img)
        if any(s.get("format") == "qwen25vl" for s in samples):
            # frames are already multiples of the factor: smart_resize leaves them as they are
            self.processor.image_processor.size = {"shortest_edge": self.factor ** 2,
                                                   "longest_edge": max(i.size[0] * i.size[1] for i in out)}
        return out

    @staticmethod
    def messages(prompt: str, target: str | None = None) -> list[dict]:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        if target is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
        return msgs

    def prompt_text(self, prompt: str) -> str:
        return self.processor.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, samples):
        out = self.processor(text=[self.prompt_text(s["prompt"]) for s in samples], images=self.images(samples),
                             padding="longest", return_tensors="pt")
        return {k: v for k, v in out.items() if k in self.KEYS}

    def encode_train(self, samples, targets):
        texts = [self.processor.apply_chat_template(self.messages(s["prompt"], t), tokenize=False)
                 for s, t in zip(samples, targets)]
        full = self.processor(text=texts, images=self.images(samples), padding="longest", return_tensors="pt")
        image_token = getattr(self.processor, "image_token", "<|image_pad|>")
        counts = [int(t.prod()) // self.merge ** 2 for t in full["image_grid_thw"]]
        end_id = self.tokenizer.convert_tokens_to_ids(self.END)
        starts, ends = [], []
        for i, s in enumerate(samples):
            prompt = self.prompt_text(s["prompt"]).replace(image_token, image_token * counts[i], 1)
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            row = full["input_ids"][i].tolist()
            if row[:len(ids)] != ids:
                raise ValueError(f"record {s['id']}: the chat prompt does not tokenize to a prefix of the "
                                 "conversation; cannot mask the prompt")
            length = int(full["attention_mask"][i].sum())
            last_end = max(k for k in range(length) if row[k] == end_id)
            starts.append(len(ids))
            ends.append(last_end + 1)
        inputs = {k: v for k, v in full.items() if k in self.KEYS}
        inputs["labels"] = self.mask_prefix(full["input_ids"], full["attention_mask"], starts, ends)
        return inputs


def qwen25vl_frame(record: dict) -> tuple[int, int]:
    """(width, height) of the image a qwen25vl record's coordinates refer to."""
    import json

    meta = record.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = None
    frame = meta.get("frame") if isinstance(meta, dict) else None
    if isinstance(frame, dict) and frame.get("width") and frame.get("height"):
        return int(frame["width"]), int(frame["height"])
    from groundforge.transforms.codecs import get_codec

    w, h = get_codec("qwen25vl").resized(record["width"], record["height"])
    return int(w), int(h)
