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
