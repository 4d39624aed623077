"""train/: PaliGemma, Qwen2-VL, Qwen2.5-VL and Kosmos-2 trained natively in transformers off the same shards.

Tiny random-weight models of each family are built offline (train.tiny) with the family's own tokenizer
class and processor. For each: the labels are exactly the answer (prompt, image and padding masked), the loss
falls when overfitting 8 records, and eval decodes the family's generations and parses them with
transforms.templates.parse_output.
"""
from __future__ import annotations

import os

import pytest

from train_fixtures import make_record, tiny_florence2, write_shards

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models run fastest on one thread

FORMATS = ("paligemma", "qwen2vl", "qwen25vl", "kosmos2")
# the token each family's answer ends with (labels include it; the model learns to stop)
END = {"paligemma": "<eos>", "qwen2vl": "<|im_end|>", "qwen25vl": "<|im_end|>", "kosmos2": "</s>"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from groundforge.train.tiny import save_random

    return {fmt: save_random(fmt, str(tmp_path_factory.mktemp(f"tiny-{fmt}"))) for fmt in FORMATS}


def _records(fmt, n=8, split="train"):
    tasks = ("rec", "count_class")
    return [make_record(i, tasks[i % 2], fmt=fmt, split=split) for i in range(n)]


def _samples(records):
    from groundforge.train.data import load_image

    return [dict(r, image=load_image(r["image"], "x")) for r in records]


@pytest.mark.parametrize("fmt", FORMATS)
def test_labels_are_exactly_the_answer(models, fmt):
    from groundforge.train.families import detect, make_collator
    from groundforge.train.model import load_processor

    family = detect(models[fmt])
    assert fmt in family.formats
    processor = load_processor(models[fmt], family=family)
    tok = processor.tokenizer
    records = [make_record(0, "rec", fmt=fmt), make_record(1, "count_class", fmt=fmt)]
    batch = make_collator(family, processor)(_samples(records))
    inputs = batch["inputs"]
    end = tok.convert_tokens_to_ids(END[fmt])
    for i, rec in enumerate(records):
        labels, ids = inputs["labels"][i], inputs["input_ids"][i]
        kept = (labels != -100).nonzero().flatten().tolist()
        start = kept[0]
        assert kept == list(range(start, start + len(kept)))                 # one contiguous span
        squash = lambda t: "".join(t.replace("▁", " ").split())                # noqa: E731 (tokenizers space)
        assert labels[kept].tolist() == ids[kept].tolist() and labels[kept][-1] == end
        assert squash(tok.decode(labels[kept])) == squash(rec["target"] + END[fmt])
        if fmt != "kosmos2":   # XLM-R tokenizes a text alone with a leading ▁ that it has not after the prompt
            assert labels[kept].tolist() == tok(rec["target"], add_special_tokens=False)["input_ids"] + [end]
        prefix = tok.decode(ids[:start][inputs["attention_mask"][i][:start] == 1])
        assert squash(prefix).endswith(squash(rec["prompt"])) or fmt.startswith("qwen") or fmt == "paligemma"
        assert squash(rec["prompt"]) in squash(prefix)                        # the prompt is all masked
        after = inputs["attention_mask"][i][start + len(kept):].tolist()
        assert fmt.startswith("qwen") or not any(after)                      # nothing learned after the end
    # generation batches: prompt only, padded on the left
    gen = make_collator(family, processor, with_labels=False)(_samples(records))["inputs"]
    assert "labels" not in gen and gen["attention_mask"][:, -1].tolist() == [1, 1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_loss_falls_when_overfitting_8_records_and_eval_parses_generations(models, fmt, tmp_path):
    from groundforge.train.evaluate import EvalConfig, evaluate
    from groundforge.train.loop import TrainConfig, train

    folder = str(tmp_path / "shards")
    write_shards(folder, _records(fmt), n_files=1, row_group_size=8)
    losses = []
    summary = train(TrainConfig(model=models[fmt], shards=[folder], out=str(tmp_path / "out"), steps=20,
                                batch_size=8, lr=1e-2, num_workers=0, log_every=5, progress=False, save_every=0,
                                shuffle_buffer=8, device="cpu", dtype="fp32"),
                    on_step=lambda step, info: losses.append(info["loss"]))
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    report = evaluate(EvalConfig(model=summary["final"], shards=[folder], out=str(tmp_path / "r.json"), split="all",
                                 num_beams=1, max_new_tokens=12, num_workers=0, device="cpu", examples=1,
                                 progress=False))
    assert report["n"] == 8 and report["tasks"]["rec"]["n"] == report["tasks"]["count_class"]["n"] == 4
    # generations are the answer only, decoded with the family's tokenizer
    for example in report["examples"]:
        assert example["prompt"] not in example["generation"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_decodes_and_parses_each_familys_answers(models, fmt):
    """The target as the family's tokenizer decodes it (special tokens kept, then the answer end) scores as
    right through parse_output: rec acc 1.0, count_class 1.0."""
    from groundforge.train.metrics import score_records
    from groundforge.train.model import load_processor

    tok = load_processor(models[fmt]).tokenizer
    records = [make_record(i, t, fmt=fmt) for i in range(3) for t in ("rec", "count_class")]
    decoded = [tok.decode(tok(r["target"], add_special_tokens=False)["input_ids"]
                          + [tok.convert_tokens_to_ids(END[fmt])]) for r in records]
    report = score_records(records, decoded)
    assert report["rec"]["acc@0.5"] == 1.0 and report["rec"]["unparsed"] == 0
    assert report["count_class"]["accuracy"] == 1.0


def test_the_family_must_match_the_shards_format(models, tmp_path_factory, tmp_path):
    from groundforge.train.loop import TrainConfig, train

    florence = tiny_florence2(tmp_path_factory)
    write_shards(str(tmp_path / "k"), _records("kosmos2", 2), n_files=1, row_group_size=2)
    write_shards(str(tmp_path / "f"), _records("florence2", 2), n_files=1, row_group_size=2)
    for model, shards, msg in [
            (florence, "k", "rendered for format 'kosmos2', but --model is Florence-2, which trains on `florence2`"),
            (models["paligemma"], "f", "but --model is PaliGemma / PaliGemma 2, which trains on `paligemma`"),
            (models["qwen25vl"], "k", "but --model is Qwen2.5-VL, which trains on `qwen25vl`")]:
        with pytest.raises(ValueError, match="render --format") as info:
            train(TrainConfig(model=model, shards=[str(tmp_path / shards)], out=str(tmp_path / "o"), steps=1,
                              num_workers=0, progress=False))
        assert msg in str(info.value)
        assert not os.path.exists(tmp_path / "o" / "checkpoints")


def test_qwen25vl_images_are_resized_to_the_frame_of_their_coordinates(models):
    """Qwen2.5-VL's answers are absolute pixels of the smart_resize'd image: the collator feeds the model
    exactly that frame (the record's meta["frame"] when recorded, else the codec's frame for its size)."""
    import json

    from groundforge.train.collate import qwen25vl_frame
    from groundforge.train.families import detect, make_collator
    from groundforge.train.model import load_processor
    from groundforge.transforms.codecs import get_codec

    family = detect(models["qwen25vl"])
    processor = load_processor(models["qwen25vl"], family=family)
    plain = make_record(0, "rec", fmt="qwen25vl", width=100, height=60)
    framed = {**make_record(1, "rec", fmt="qwen25vl"), "meta": json.dumps({"frame": {"format": "qwen25vl",
                                                                                     "width": 112, "height": 84}})}
    assert qwen25vl_frame(plain) == tuple(get_codec("qwen25vl").resized(100, 60))
    assert qwen25vl_frame(framed) == (112, 84)
    for rec in (plain, framed):
        grid = make_collator(family, processor)(_samples([rec]))["inputs"]["image_grid_thw"][0].tolist()
        w, h = qwen25vl_frame(rec)
        assert grid == [1, h // 14, w // 14]


@pytest.mark.parametrize("fmt", FORMATS)
def test_lora_targets_and_vision_tower_of_each_family(models, fmt):
    from groundforge.train.families import detect
    from groundforge.train.model import apply_lora, freeze_vision, load_model, vision_tower

    family = detect(models[fmt])
    model = load_model(models[fmt])
    vision_names = {n for n, _ in vision_tower(model).named_parameters()}
    assert vision_names and freeze_vision(model) == len(vision_names)
    wrapped = apply_lora(model, r=2, targets=family.lora_targets)
    adapted = [n for n, _ in wrapped.named_modules() if n.endswith(".lora_A")]
    assert adapted and all(("language_model" in n or "text_model" in n) for n in adapted)
    assert not any(f".{family.vision}." in n for n in adapted)
