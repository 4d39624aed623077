"""train/: overfitting, resume, freezing, LoRA, evaluation metrics and the CLI, on a tiny random Florence-2."""
from __future__ import annotations

import json
import os

import pytest
from train_fixtures import make_record, write_shard, write_shards

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models run fastest on one thread


@pytest.fixture(scope="module")
def shards8(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shards8"))
    write_shards(folder, [make_record(i) for i in range(8)], n_files=2, row_group_size=2)
    return folder


@pytest.fixture(scope="module")
def shards12(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shards12"))
    write_shards(folder, [make_record(i) for i in range(12)], n_files=3, row_group_size=2)
    return folder


def _config(model, shards, out, **kw):
    from groundforge.train.loop import TrainConfig

    base = dict(model=model, shards=[shards], out=str(out), batch_size=4, lr=1e-2, num_workers=0,
                log_every=1, progress=False, save_every=0, shuffle_buffer=4)
    base.update(kw)
    return TrainConfig(**base)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tiny_tokenizer_and_processor_roundtrip(tiny_model):
    from groundforge.train.model import load_processor

    proc = load_processor(tiny_model)
    tok = proc.tokenizer
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<loc_999>") != tok.unk_token_id
    ids = tok("thing 3<loc_354><loc_300><loc_729><loc_700>").input_ids
    assert ids[0] == 0 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=False) == "<s>thing 3<loc_354><loc_300><loc_729><loc_700></s>"


def test_labels_are_tokenized_targets_with_padding_ignored(tiny_model):
    from groundforge.train.collate import IGNORE_INDEX, Florence2Collator
    from groundforge.train.data import load_image
    from groundforge.train.model import load_processor

    proc = load_processor(tiny_model)
    recs = [make_record(0), make_record(1, task="count_class")]
    samples = [dict(r, image=load_image(r["image"], "x")) for r in recs]
    batch = Florence2Collator(proc)(samples)
    labels = batch["inputs"]["labels"]
    first = proc.tokenizer(recs[0]["target"]).input_ids
    second = proc.tokenizer("1").input_ids
    assert labels[0].tolist() == first
    assert labels[1].tolist() == second + [IGNORE_INDEX] * (len(first) - len(second))
    assert batch["inputs"]["pixel_values"].shape == (2, 3, 32, 32)
    # 65 image placeholder tokens, then <s> prompt </s>
    assert batch["inputs"]["input_ids"][0, :65].tolist() == [proc.tokenizer.image_token_id] * 65
    assert batch["ids"] == [r["id"] for r in recs]


def test_loss_falls_when_overfitting_8_records(tiny_model, shards8, tmp_path):
    from groundforge.train.loop import train

    losses = []
    summary = train(_config(tiny_model, shards8, tmp_path / "out", batch_size=8, steps=30),
                    on_step=lambda step, info: losses.append(info["loss"]))
    assert summary["steps"] == 30 and len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5
    lines = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [r["step"] for r in lines] == list(range(1, 31))
    assert lines[-1]["loss"] == pytest.approx(losses[-1])
    assert os.path.isfile(tmp_path / "out" / "final" / "model.safetensors")
    assert os.path.isfile(tmp_path / "out" / "checkpoints" / "step-00000030" / "trainer_state.pt")


def test_an_overfit_model_generates_its_targets_and_scores_them(tiny_model, tmp_path):
    """Training -> save_pretrained -> generate -> parse_output -> metrics, end to end: after overfitting
    4 rec + 4 count_class records, greedy generations reproduce the targets and score as correct.
    (The margins allow for float-order differences between CPUs; the run is seeded.)"""
    from groundforge.train.evaluate import EvalConfig, evaluate
    from groundforge.train.loop import train

    folder = str(tmp_path / "shards")
    write_shards(folder, [make_record(i, t) for i in range(4) for t in ("rec", "count_class")], 1, 8)
    summary = train(_config(tiny_model, folder, tmp_path / "out", steps=200, batch_size=8, lr=5e-3, warmup=10,
                            schedule="cosine", log_every=50))
    report = evaluate(EvalConfig(split="all", model=summary["final"], shards=[folder], out=str(tmp_path / "r.json"),
                                 num_beams=1, max_new_tokens=20, num_workers=0, device="cpu", examples=4))
    assert report["tasks"]["count_class"]["accuracy"] == 1.0
    assert report["tasks"]["rec"]["acc@0.5"] >= 0.5     # a random model scores 0; this one 0.75-1.0
    assert any(e["generation"] == e["target"] for e in report["examples"] if e["task"] == "rec")


def test_resume_continues_at_the_same_step_with_the_same_data(tiny_model, shards12, tmp_path):
    """An uninterrupted 6-step run vs. one interrupted after step 4 (Ctrl-C saves a checkpoint) and resumed:
    same step numbers, same record ids per step, same losses. Two loader workers, so the worker order is
    restored as well."""
    from groundforge.train.loop import train

    kw = dict(steps=6, batch_size=2, grad_accum=2, num_workers=2, save_every=3, lr=5e-3, warmup=2,
              schedule="cosine")
    ref = {}
    train(_config(tiny_model, shards12, tmp_path / "a", **kw), on_step=lambda s, i: ref.__setitem__(s, i))

    got = {}

    def interrupt_after_4(step, info):
        got[step] = info
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_model, shards12, tmp_path / "b", **kw), on_step=interrupt_after_4)
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["step-00000003", "step-00000004"]
    resumed = {}
    train(_config(tiny_model, shards12, tmp_path / "b", resume=True, **kw),
          on_step=lambda s, i: resumed.__setitem__(s, i))
    assert sorted(resumed) == [5, 6]
    for step in range(1, 7):
        other = got[step] if step <= 4 else resumed[step]
        assert other["ids"] == ref[step]["ids"], step
        assert other["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6), step
        assert other["lr"] == pytest.approx(ref[step]["lr"])
    steps_logged = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps_logged == [1, 2, 3, 4, 5, 6]
    # the data settings must match to resume
    with pytest.raises(ValueError, match="batch_size: checkpoint 2 vs now 3"):
        train(_config(tiny_model, shards12, tmp_path / "b", resume=True, **{**kw, "batch_size": 3, "steps": 7}))


def test_freeze_vision_keeps_the_vision_tower_unchanged(tiny_model, shards8, tmp_path):
    from groundforge.train.loop import train
    from groundforge.train.model import freeze_vision, load_model, vision_tower

    model = load_model(tiny_model)
    assert freeze_vision(model) == len(list(vision_tower(model).parameters())) > 0
    assert not any(p.requires_grad for p in vision_tower(model).parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if "vision_tower" not in n)

    before = _state(load_model(tiny_model))
    summary = train(_config(tiny_model, shards8, tmp_path / "out", steps=3, freeze_vision=True))
    after = _state(load_model(summary["final"]))
    vision = [k for k in before if ".vision_tower." in k]
    language = [k for k in before if ".language_model." in k and k.endswith("weight")]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in language)
    assert summary["trainable_parameters"] == summary["parameters"] - sum(before[k].numel() for k in vision
                                                                          if not k.endswith("pos_idx_to_embed"))


def test_lora_trains_only_the_adapter(tiny_model, shards8, tmp_path):
    from groundforge.train.loop import train
    from groundforge.train.model import load_model

    summary = train(_config(tiny_model, shards8, tmp_path / "out", steps=3, lora=True, lora_r=4))
    assert summary["trainable_parameters"] < summary["parameters"] / 4
    adapter = tmp_path / "out" / "final-adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model
    peft_model = load_model(str(adapter))
    names = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]
    assert names and all(".language_model." in n for n in names)
    assert {n.split(".")[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    before, merged = _state(load_model(tiny_model)), _state(load_model(summary["final"]))
    assert all(torch.equal(before[k], merged[k]) for k in before if ".vision_tower." in k)
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    assert changed and all(k.split(".")[-2] in {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
                           for k in changed)
    # `groundforge eval` takes the adapter directory directly
    from groundforge.train.evaluate import EvalConfig, evaluate

    report = evaluate(EvalConfig(split="all", model=str(adapter), shards=[shards8], out=str(tmp_path / "r.json"), batch_size=4,
                                 max_samples=4, num_beams=1, max_new_tokens=4, num_workers=0, examples=0,
                                 device="cpu"))
    assert report["n"] == 4 and report["tasks"]["rec"]["n"] == 4


def _records(task, n, **kw):
    return [make_record(i, task, **kw) for i in range(n)]


def test_eval_scores_known_generations():
    from groundforge.train.metrics import score_records
    from groundforge.transforms.codecs import get_codec

    codec = get_codec("florence2")
    recs, gens = [], []
    # rec: exact box, box off by a lot, unparseable -> 1/3 on val; testA: 1/1
    val = _records("rec", 3, split="val")
    for r in val:
        recs.append(r)
    box = val[1]["objects"][0]["bbox"]
    gens += [val[0]["target"] + "</s>",
             "</s><s>" + codec.phrase_text("x", [[box[0] + 12, box[1] + 10, box[2] + 12, box[3] + 10]], 48, 40),
             "no box here"]
    ta = make_record(7, "rec", split="testA")
    recs.append(ta)
    gens.append("<s>" + ta["target"] + "</s><pad><pad>")
    # counting: exact JSON object, a wrong count
    c = _records("counting", 2)
    recs += c
    gens += ['{"thing 0": 1}', '{"thing 1": 2}']
    # count_class: the integer, a wrong one
    cc = _records("count_class", 2)
    recs += cc
    gens += ["1", "3"]
    # reg: exact, half the words
    rg = _records("reg", 2)
    recs += rg
    gens += ["Thing 0.", "thing"]
    # grounded_caption: 2 phrases, one right (phrase and box), one with the wrong phrase
    gc = make_record(3, "grounded_caption")
    recs.append(gc)
    o = gc["objects"]
    gens.append(codec.phrase_text("thing 3", [o[0]["bbox"]], 48, 40) + codec.phrase_text("cat", [o[1]["bbox"]], 48, 40))

    report = score_records(recs, gens)
    rec = report["rec"]
    assert (rec["n"], rec["hit"], rec["unparsed"]) == (4, 2, 1)
    assert rec["acc@0.5"] == 0.5
    assert rec["by_split"]["refcoco/val"]["acc@0.5"] == pytest.approx(1 / 3)
    assert rec["by_split"]["refcoco/testA"]["acc@0.5"] == 1.0
    assert report["counting"]["accuracy"] == 0.5 and report["counting"]["exact"] == 1
    assert report["count_class"]["accuracy"] == 0.5
    assert report["reg"]["exact_match"] == 0.5
    assert report["reg"]["similarity"] == pytest.approx((1.0 + 2 / 3) / 2)
    g = report["grounded_caption"]
    assert (g["true"], g["pred"], g["matched"]) == (2, 2, 1)
    assert g["recall@0.5"] == 0.5 and g["precision@0.5"] == 0.5


def test_eval_command_writes_report_and_examples(tiny_model, tmp_path):
    from click.testing import CliRunner
    from groundforge.train.cli import eval_command

    folder = str(tmp_path / "shards")
    recs = _records("rec", 3, split="val") + _records("count_class", 2, split="val")
    write_shards(folder, recs, n_files=1, row_group_size=4, prefix="val")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(eval_command, [
        "--model", tiny_model, "--shards", folder, "--out", str(out), "--batch-size", "2", "--num-beams", "1",
        "--max-new-tokens", "6", "--num-workers", "0", "--examples", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 5
    assert report["tasks"]["rec"]["n"] == 3 and report["tasks"]["count_class"]["n"] == 2
    assert sorted(report["tasks"]["rec"]["by_split"]) == ["refcoco/val"]
    assert [e["task"] for e in report["examples"]] == ["rec", "count_class"]
    for e in report["examples"]:
        assert os.path.isfile(tmp_path / e["image"])


def test_train_command_end_to_end_with_mix_and_eval(tiny_model, tmp_path):
    from click.testing import CliRunner
    from groundforge.train.cli import train_command

    write_shards(str(tmp_path / "a"), _records("rec", 4), n_files=1, row_group_size=2)
    write_shards(str(tmp_path / "b"), _records("count_class", 4), n_files=1, row_group_size=2)
    out = tmp_path / "run"
    args = ["--model", tiny_model, "--shards", f"refcoco={tmp_path / 'a'}", "--shards", f"counting={tmp_path / 'b'}",
            "--mix", "refcoco=0.5,counting=0.5", "--out", str(out), "--steps", "2", "--batch-size", "2",
            "--lr", "1e-3", "--num-workers", "0", "--save-every", "1", "--keep-checkpoints", "1",
            "--eval-every", "2", "--eval-shards", str(tmp_path / "a"), "--eval-split", "all", "--eval-max-samples", "2",
            "--eval-num-beams", "1", "--log-every", "1", "--no-progress", "--device", "cpu", "--dtype", "fp32",
            "--gradient-checkpointing", "--split", "train", "--report-to", "none"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 0, result.output
    final = result.output.strip().splitlines()[-1]
    assert final.startswith("trained 2 steps in ") and ", final loss " in final
    assert final.endswith(f"; model in {out / 'final'}")
    assert sorted(os.listdir(out / "checkpoints")) == ["step-00000002"]
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [1, 2, 2]
    assert lines[-1]["eval_n"] == 2 and "rec/acc@0.5" in lines[-1]["eval"]
    assert os.path.isfile(out / "eval" / "step-00000002.json")
    assert json.loads((out / "train_config.json").read_text())["mix"] == "refcoco=0.5,counting=0.5"

    bad = CliRunner().invoke(train_command, args[:8] + ["--mix", "refcoco=1,grit=1", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unmatched: ['counting', 'grit']" in bad.output
    again = CliRunner().invoke(train_command, args)
    assert again.exit_code == 1 and "already holds checkpoints: pass --resume" in again.output
    both = CliRunner().invoke(train_command, args + ["--epochs", "1"])
    assert both.exit_code == 2 and "give --steps or --epochs, not both" in both.output


def test_grad_accum_equals_the_large_batch_whatever_the_target_lengths(tiny_model, tmp_path):
    """--batch-size 4 vs --batch-size 2 --grad-accum 2 on the same 4 records: same loss, same gradient.
    The micro-batches have very different label token counts (rec targets vs one-digit counts), so the
    mean of the two micro-batch means (loss / grad_accum) would differ from the step's token mean."""
    from groundforge.train.collate import Florence2Collator
    from groundforge.train.loop import label_tokens, train
    from groundforge.train.model import load_processor

    folder = str(tmp_path / "shards")
    recs = [make_record(0), make_record(1), make_record(2, "count_class"), make_record(3, "count_class")]
    write_shards(folder, recs, n_files=1, row_group_size=4)
    runs = {}
    for name, kw in {"big": dict(batch_size=4), "accum": dict(batch_size=2, grad_accum=2)}.items():
        train(_config(tiny_model, folder, tmp_path / name, steps=1, shuffle_buffer=1, **kw),
              on_step=lambda s, info, name=name: runs.__setitem__(name, info))
    assert runs["accum"]["ids"] == runs["big"]["ids"] == [r["id"] for r in recs]
    assert runs["accum"]["loss"] == pytest.approx(runs["big"]["loss"], rel=1e-5)
    assert runs["accum"]["grad_norm"] == pytest.approx(runs["big"]["grad_norm"], rel=1e-4)
    collate = Florence2Collator(load_processor(tiny_model))
    counts = [label_tokens({"labels": collate.labels([r["target"] for r in pair])}) for pair in (recs[:2], recs[2:])]
    assert counts[0] > 2 * counts[1]          # the micro-batches really are unequal


def test_unreadable_images_are_counted_in_training_and_eval(tiny_model, tmp_path):
    """Records skipped inside DataLoader workers reach the training summary, metrics.jsonl and the eval
    report; eval with --max-samples generates only for the records it scores."""
    import groundforge.train.evaluate as evaluate_mod
    from groundforge.train.evaluate import EvalConfig, evaluate
    from groundforge.train.loop import train

    folder = str(tmp_path / "shards")
    bad = make_record(1)
    bad["image"] = {"bytes": b"not an image", "path": None}
    write_shard(os.path.join(folder, "a.parquet"), [make_record(0), bad])
    write_shard(os.path.join(folder, "b.parquet"), [make_record(2), make_record(3)])
    # worker 0's first batch: record 0, (record 1 skipped), record 0 again (epoch 2); worker 1's: records 2, 3
    summary = train(_config(tiny_model, folder, tmp_path / "out", steps=2, batch_size=2, num_workers=2,
                            shuffle_buffer=1))
    assert summary["skipped"] == {"UnidentifiedImageError": 1}
    lines = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [line.get("skipped") for line in lines] == [{"UnidentifiedImageError": 1}] * 2

    sizes = []
    real_generate = evaluate_mod.generate

    def counting_generate(model, processor, inputs, **kw):
        sizes.append(inputs["input_ids"].shape[0])
        return real_generate(model, processor, inputs, **kw)

    evaluate_mod.generate = counting_generate
    try:
        full = evaluate(EvalConfig(split="all", model=tiny_model, shards=[folder], out=str(tmp_path / "r.json"), batch_size=2,
                                   num_beams=1, max_new_tokens=2, num_workers=2, device="cpu", examples=0))
        assert (full["n"], full["skipped"]) == (3, {"UnidentifiedImageError": 1})
        sizes.clear()
        part = evaluate(EvalConfig(split="all", model=tiny_model, shards=[folder], out=str(tmp_path / "p.json"), batch_size=2,
                                   max_samples=1, num_beams=1, max_new_tokens=2, num_workers=0, device="cpu",
                                   examples=0))
        assert part["n"] == 1 and sizes == [1]
    finally:
        evaluate_mod.generate = real_generate


def test_resume_survives_a_metrics_line_cut_short(tmp_path):
    from groundforge.train.loop import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    log = MetricsLog(str(path), enabled=True, start_step=2)
    log.write({"step": 3, "loss": 1.0})
    assert [json.loads(line)["step"] for line in open(path)] == [1, 2, 3]


def test_resume_refuses_to_switch_between_lora_and_full(tiny_model, shards8, tmp_path):
    from groundforge.train.loop import train

    train(_config(tiny_model, shards8, tmp_path / "out", steps=1, lora=True, lora_r=2))
    with pytest.raises(ValueError, match="holds a LoRA adapter; pass --lora"):
        train(_config(tiny_model, shards8, tmp_path / "out", steps=2, resume=True))


def test_rec_scores_the_first_box_and_grounded_caption_recalls_phrases():
    from groundforge.train.metrics import score_records
    from groundforge.transforms.codecs import get_codec

    codec = get_codec("florence2")
    rec = make_record(0, "rec")
    true, far = rec["objects"][0]["bbox"], [30.0, 30.0, 47.0, 39.0]
    gens = [codec.phrase_text("x", [far, true], 48, 40), codec.phrase_text("x", [true, far], 48, 40)]
    report = score_records([rec, rec], gens)
    assert (report["rec"]["hit"], report["rec"]["acc@0.5"]) == (1, 0.5)

    # "thing 3" grounds two boxes (one span), "box" one: 2 phrases, 3 boxes
    gc = make_record(3, "grounded_caption")
    gc["objects"].append({**gc["objects"][0], "bbox": [30.0, 20.0, 46.0, 38.0]})
    (a, b), other = [o["bbox"] for o in gc["objects"][::2]], gc["objects"][1]["bbox"]
    both = codec.phrase_text("thing 3", [a, b], 48, 40) + codec.phrase_text("box", [other], 48, 40)
    one_box = codec.phrase_text("thing 3", [b], 48, 40)
    wrong_text = codec.phrase_text("a box", [other], 48, 40)
    g = score_records([gc] * 3, [both, one_box, wrong_text])["grounded_caption"]
    assert (g["phrases"], g["phrases_hit"], g["true"], g["matched"]) == (6, 3, 9, 4)
    assert g["phrase_recall@0.5"] == 0.5 and g["recall@0.5"] == pytest.approx(4 / 9)
    assert g["precision@0.5"] == pytest.approx(4 / 5)
