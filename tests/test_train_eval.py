"""train/: the eval protocol -- split defaults, train/eval image overlap, holdout images, pinned generation
settings, majority baselines and MAE for counts, multi-reference reg, the eval progress bar."""
from __future__ import annotations

import json
import logging
import os

import pytest

from train_fixtures import make_record, write_shard

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models run fastest on one thread


def _build_out(root, shared_image: bool = False, holdout: list[str] | None = None) -> str:
    """A build output dir: data/train (4 rows), data/val (2), data/testA (2); the val shard optionally
    reuses a train image (same bytes, same image_sha256)."""
    data = os.path.join(root, "data")
    train = [make_record(i, split="train") for i in range(4)]
    val = [make_record(10 + i, split="val", width=50) for i in range(2)]
    if shared_image:
        val[0] = {**val[0], "image": train[1]["image"], "image_sha256": train[1]["image_sha256"]}
    write_shard(os.path.join(data, "train-00000-of-00001.parquet"), train, 2)
    write_shard(os.path.join(data, "val-00000-of-00001.parquet"), val)
    write_shard(os.path.join(data, "testA-00000-of-00001.parquet"), [make_record(20 + i, split="testA", width=52)
                                                                    for i in range(2)])
    if holdout is not None:
        with open(os.path.join(root, "holdout_image_ids.txt"), "w") as f:
            f.write("# image ids of the val/test splits\n" + "".join(f"{i}\n" for i in holdout))
    return str(root)


def _kw(model, shards, out, **kw):
    from groundforge.train.loop import TrainConfig

    base = dict(model=model, shards=[shards], out=str(out), batch_size=2, lr=1e-3, num_workers=0, log_every=1,
                progress=False, save_every=0, shuffle_buffer=2, device="cpu", dtype="fp32")
    base.update(kw)
    return TrainConfig(**base)


def test_train_defaults_to_the_train_split_and_eval_to_the_others(tmp_path):
    from groundforge.train.data import discover, parse_splits

    out = _build_out(tmp_path / "ds")
    names = lambda sources: sorted(os.path.basename(f) for fs in sources.values() for f in fs)  # noqa: E731
    assert names(discover([out], "train")) == ["train-00000-of-00001.parquet"]
    assert names(discover([out], "-train")) == ["testA-00000-of-00001.parquet", "val-00000-of-00001.parquet"]
    assert names(discover([out], "val")) == ["val-00000-of-00001.parquet"]
    assert len(names(discover([out], "all"))) == 3
    with pytest.raises(FileNotFoundError, match=r"none of split 'testB' \(found: testA, train, val\)"):
        discover([out], "testB")
    with pytest.raises(ValueError, match="mixes"):
        parse_splits("val,-train", "all")
    from groundforge.train.evaluate import EvalConfig
    from groundforge.train.loop import TrainConfig

    assert TrainConfig(model="m", shards=[], out="o").split == "train"
    assert TrainConfig(model="m", shards=[], out="o").eval_split == "-train"
    assert EvalConfig(model="m", shards=[], out="o").split == "-train"


def test_train_and_eval_warn_on_shared_images_and_training_skips_holdout_images(tiny_model, tmp_path, caplog):
    """A val image that is also a train image (same image_sha256) is reported by train (--eval-shards) and
    eval; train images listed in the build's holdout_image_ids.txt are left out of training."""
    from groundforge.train.evaluate import EvalConfig, evaluate
    from groundforge.train.loop import train

    out = _build_out(tmp_path / "ds", shared_image=True, holdout=["2"])   # image_id of train record 2
    held = make_record(2)["id"]
    seen = []
    with caplog.at_level(logging.WARNING):
        summary = train(_kw(tiny_model, out, tmp_path / "run", steps=3, eval_every=3, eval_shards=[out],
                            eval_max_samples=1, eval_num_beams=1, eval_max_new_tokens=2),
                        on_step=lambda step, info: seen.extend(info["ids"]))
    assert summary["overlap"] == {"eval_images": 4, "shared_images": 1, "train_rows_with_eval_images": 1}
    assert "1 of the 4 eval images are in the train shards too" in caplog.text
    assert summary["holdout_image_ids"] == 1 and summary["skipped"]["holdout_image"] >= 1
    assert held not in seen and len(set(seen)) == 3

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = evaluate(EvalConfig(model=tiny_model, shards=[out], out=str(tmp_path / "r.json"), num_beams=1,
                                     max_new_tokens=2, num_workers=0, device="cpu", examples=0, progress=False))
    assert report["n"] == 4 and sorted(report["tasks"]["rec"]["by_split"]) == ["refcoco/testA", "refcoco/val"]
    assert report["overlap"]["shared_images"] == 1 and report["overlap"]["train_files"] == 1
    assert "1 of the 4 eval images are also in the train shards" in caplog.text


def test_generation_settings_are_pinned_and_recorded(tiny_model, tmp_path):
    """A checkpoint's generation_config (Florence-2 ships no_repeat_ngram_size=3) must not change eval:
    with a model that always prefers one token, the pinned greedy answer repeats it; the checkpoint's
    settings would have forbidden the repeat."""
    from groundforge.train.data import discover, list_units
    from groundforge.train.evaluate import eval_loader, generate, run_eval
    from groundforge.train.model import load_model, load_processor

    model, processor = load_model(tiny_model), load_processor(tiny_model)
    model.generation_config.no_repeat_ngram_size = 3
    model.generation_config.num_beams = 4
    model.generation_config.repetition_penalty = 1.5
    token = processor.tokenizer.convert_tokens_to_ids("<loc_7>")
    bias = torch.zeros(model.lm_head.out_features)
    bias[token] = 100.0
    model.lm_head.register_forward_hook(lambda mod, args, out: out + bias)
    write_shard(str(tmp_path / "s" / "val-00000-of-00001.parquet"), [make_record(0, split="val")])
    sources = list_units(discover([str(tmp_path / "s")]))
    batch = next(iter(eval_loader(sources, processor, batch_size=1, num_workers=0, image_root=None)))
    pinned = generate(model, processor, batch["inputs"], device=torch.device("cpu"), amp_dtype=None,
                      num_beams=1, max_new_tokens=6)[0]
    assert pinned.count("<loc_7>") == 5          # then the checkpoint's forced EOS at max length
    model.eval()
    with torch.no_grad():
        unpinned = model.generate(**batch["inputs"], max_new_tokens=6)
    assert processor.tokenizer.decode(unpinned[0]).count("<loc_7>") < 5

    report = run_eval(model, processor, sources, out=None, device=torch.device("cpu"), num_beams=1,
                      max_new_tokens=6, examples=0, progress=False)
    gen = report["generation"]
    assert (gen["no_repeat_ngram_size"], gen["repetition_penalty"], gen["num_beams"], gen["do_sample"]) == (0, 1.0, 1,
                                                                                                           False)
    assert gen["max_new_tokens"] == 6 and gen["eos_token_id"] == 2 and gen["decoder_start_token_id"] == 2


def test_counting_scores_have_mae_and_a_majority_baseline():
    from groundforge.train.metrics import score_records

    # count_class targets: 1, 1, 1 (make_record's one object each) and a record whose target says 3
    recs = [make_record(i, "count_class") for i in range(4)]
    recs[3] = {**recs[3], "target": "3"}
    report = score_records(recs, ["1", "2", "no idea", "5"])["count_class"]
    assert report["accuracy"] == 0.25
    assert report["mae_n"] == 3 and report["mae"] == pytest.approx((0 + 1 + 2) / 3)
    assert report["majority_answer"] == 1 and report["majority_accuracy"] == 0.75
    assert report["majority_mae"] == pytest.approx(2 / 4)
    assert report["by_split"]["refcoco/train"]["majority_accuracy"] == 0.75

    c = [make_record(i, "counting") for i in range(2)]
    truths = [json.loads(r["target"]) for r in c]
    wrong = {**truths[1], next(iter(truths[1])): 3}
    report = score_records(c, [json.dumps(truths[0]), json.dumps(wrong)])["counting"]
    assert report["accuracy"] == 0.5
    assert report["mae"] == pytest.approx((0 + 2 / len(truths[1])) / 2)
    assert report["majority_accuracy"] == 0.5


def test_reg_is_scored_against_every_sentence_of_the_region():
    """Two sentences of one RefCOCO ref are two reg records (meta ref_id); an answer equal to either one
    is exact for both records."""
    from groundforge.train.metrics import score_records
    from groundforge.transforms.templates import render_record

    def reg(i, sentence):
        base = make_record(0, "reg")
        rec = {**base, "id": f"r{i}", "caption": sentence,
               "objects": [{**base["objects"][0], "label": sentence}],
               "meta": json.dumps({"builder": "test", "ref_id": "77", "sentence_index": i})}
        rendered = render_record(rec, "florence2")
        return {**rec, "prompt": rendered.prompt, "target": rendered.target}

    a, b = reg(0, "man in red shirt"), reg(1, "guy on the left")
    other = {**make_record(5, "reg"), "id": "o"}
    report = score_records([a, b, other], ["guy on the left", "man in red shirt", "guy on the left"])["reg"]
    assert report["exact"] == 2 and report["refs"] == 2 + 2 + 1
    assert report["similarity"] == pytest.approx((1 + 1 + 0) / 3)


def test_eval_shows_a_progress_bar(tiny_model, tmp_path, capsys):
    from groundforge.train.evaluate import EvalConfig, evaluate

    write_shard(str(tmp_path / "s" / "val-00000-of-00001.parquet"), [make_record(i, split="val") for i in range(3)])
    evaluate(EvalConfig(model=tiny_model, shards=[str(tmp_path / "s")], out=str(tmp_path / "r.json"), num_beams=1,
                        max_new_tokens=2, num_workers=0, device="cpu", examples=0, batch_size=2))
    assert "eval: 100%" in capsys.readouterr().err


def test_final_line_reports_skipped_and_truncated_records():
    from groundforge.train.cli import final_line

    line = final_line({"steps": 3, "seconds": 2, "loss": 1.5, "final": "runs/x/final",
                       "skipped": {"unreadable_image": 2, "holdout_image": 1}, "truncated": 4})
    assert line == "trained 3 steps in 2s, final loss 1.5000; skipped 3 records; truncated 4 records; model in runs/x/final"
