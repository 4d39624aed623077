"""train/: safe interruption and exact resume.

SIGTERM to the whole process group (loader workers included), under torchrun with 2 CPU ranks (gloo), and
delivered between optimizer.step() and the step counter; eval at the save step with dropout on. Each case
resumes and must reproduce the uninterrupted run's record ids, losses and learning rates step for step.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from train_fixtures import make_record, tiny_florence2, write_shards

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models run fastest on one thread

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_fixtures.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shards16"))
    write_shards(folder, [make_record(i) for i in range(16)], n_files=4, row_group_size=2)
    return folder


def _kw(model, shards, out, **kw):
    base = dict(model=model, shards=[shards], out=str(out), batch_size=2, lr=5e-3, num_workers=0, log_every=1,
                progress=False, save_every=0, shuffle_buffer=4, warmup=2, schedule="cosine", device="cpu",
                dtype="fp32")
    base.update(kw)
    return base


def _train(kw, on_step=None):
    from groundforge.train.loop import TrainConfig, train

    return train(TrainConfig(**kw), on_step=on_step)


def _record_steps(into: dict):
    return lambda step, info: into.__setitem__(step, info)


def _same_steps(got: dict, ref: dict, steps) -> None:
    for step in steps:
        assert got[step]["ids"] == ref[step]["ids"], step
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6), step
        assert got[step]["lr"] == pytest.approx(ref[step]["lr"]), step


def _read_log(path) -> dict:
    steps = {}
    if os.path.exists(path):
        for line in open(path):
            rec = json.loads(line)
            if "step" in rec:
                steps[rec["step"]] = rec
    return steps


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.path.dirname(FIXTURES)) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _launch(cmd: list[str], tmp_path):
    err = open(tmp_path / "stderr.txt", "w")
    return subprocess.Popen(cmd, env=_env(), stdout=err, stderr=subprocess.STDOUT, start_new_session=True), err


def _wait_for_step(log_paths, step: int, proc, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(max(_read_log(p) or [0]) >= step for p in log_paths):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _finish(proc, err, tmp_path, timeout: float = 60) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("training did not stop after the signal (hung)") from None
    err.close()
    return rc, (tmp_path / "stderr.txt").read_text()


def _checkpoints(out) -> list[str]:
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def test_sigterm_to_the_process_group_saves_at_a_step_boundary_and_resumes_exactly(tiny_model, shards, tmp_path):
    """`kill -TERM -PGID` (timeout, Slurm) reaches the trainer and its 2 loader workers at once: the
    workers ignore it, the trainer finishes its step, saves, and exits 143; the resumed run is the
    uninterrupted one."""
    kw = _kw(tiny_model, shards, tmp_path / "ref", steps=7, num_workers=2)
    ref = {}
    _train(kw, _record_steps(ref))

    out = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**kw, "out": str(out)}))
    prefix = str(tmp_path / "log")
    proc, err = _launch([sys.executable, FIXTURES, str(config), prefix, "2", "0.4"], tmp_path)
    _wait_for_step([prefix + "-rank0.jsonl"], 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, stderr = _finish(proc, err, tmp_path)
    assert rc == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr
    done = _read_log(prefix + "-rank0.jsonl")
    stopped = max(done)
    assert 2 <= stopped < 7
    assert _checkpoints(out) == [f"step-{stopped:08d}"]
    assert f"stopped by SIGTERM after step {stopped}" in stderr
    _same_steps(done, ref, range(1, stopped + 1))

    resumed = {}
    summary = _train({**kw, "out": str(out), "resume": True}, _record_steps(resumed))
    assert sorted(resumed) == list(range(stopped + 1, 8)) and summary["steps"] == 7
    _same_steps(resumed, ref, resumed)


def test_torchrun_two_cpu_ranks_stop_together_and_resume_exactly(tiny_model, shards, tmp_path):
    """torchrun --nproc_per_node 2 (gloo), each rank with a loader worker; SIGTERM to the process group
    (scancel): both ranks agree on the step to stop at, save one checkpoint, and neither hangs. The second
    launch resumes, then runs the uninterrupted reference (one launch for both saves a start-up)."""
    kw = _kw(tiny_model, shards, tmp_path / "ref", steps=6, num_workers=1)
    out = tmp_path / "run"

    def config(name, **change):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**kw, **change}))
        return str(path)

    def torchrun(configs, prefixes, *sleep):
        return _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        FIXTURES, ",".join(configs), ",".join(prefixes), *sleep], tmp_path)

    def logs(prefix):
        return [_read_log(f"{prefix}-rank{r}.jsonl") for r in range(2)]

    prefix = str(tmp_path / "run")
    proc, err = torchrun([config("run", out=str(out))], [prefix], "2", "0.4")
    _wait_for_step([f"{prefix}-rank{r}.jsonl" for r in range(2)], 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, stderr = _finish(proc, err, tmp_path)
    done = logs(prefix)
    stopped = max(done[0])
    assert max(done[1]) == stopped and 2 <= stopped < 6, stderr
    assert _checkpoints(out) == [f"step-{stopped:08d}"], stderr
    assert "killed by signal" not in stderr, stderr

    proc, err = torchrun([config("resume", out=str(out), resume=True), config("ref")],
                         [prefix + "-resumed", prefix + "-ref"])
    rc, stderr = _finish(proc, err, tmp_path, timeout=120)
    assert rc == 0, stderr
    resumed, ref = logs(prefix + "-resumed"), logs(prefix + "-ref")
    assert ref[0][1]["ids"] != ref[1][1]["ids"]          # the ranks read different rows
    for rank in range(2):
        assert sorted(ref[rank]) == list(range(1, 7))
        assert sorted(resumed[rank]) == list(range(stopped + 1, 7))
        _same_steps(done[rank], ref[rank], range(1, stopped + 1))
        _same_steps(resumed[rank], ref[rank], range(stopped + 1, 7))


def test_a_signal_between_optimizer_step_and_the_step_counter(tiny_model, shards, tmp_path):
    """SIGTERM delivered right after optimizer.step() of step 3: the checkpoint must be step 3 with step-3
    weights (raising there used to save step-3 weights as step 2, training a batch twice on resume)."""
    from groundforge.train.loop import Interrupted, Trainer, TrainConfig

    kw = _kw(tiny_model, shards, tmp_path / "ref", steps=5)
    ref = {}
    _train(kw, _record_steps(ref))

    trainer = Trainer(TrainConfig(**{**kw, "out": str(tmp_path / "run")}))
    real_step, calls = trainer.optimizer.step, []

    def step_then_signal(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    trainer.optimizer.step = step_then_signal
    got = {}
    with pytest.raises(Interrupted, match="stopped by SIGTERM after step 3") as info:
        trainer.run(_record_steps(got))
    assert info.value.step == 3 and sorted(got) == [1, 2, 3]
    assert _checkpoints(tmp_path / "run") == ["step-00000003"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    resumed = {}
    _train({**kw, "out": str(tmp_path / "run"), "resume": True}, _record_steps(resumed))
    assert sorted(resumed) == [4, 5]
    _same_steps({**got, **resumed}, ref, range(1, 6))


def test_resume_is_exact_with_dropout_and_eval_at_the_save_step(tmp_path_factory, shards, tmp_path):
    """Dropout draws from the RNG every step; evaluating at the checkpoint step must not move it (the eval
    loader used to draw its base seed from the global RNG after the checkpoint's snapshot)."""
    model = tiny_florence2(tmp_path_factory, dropout=0.3)
    kw = _kw(model, shards, tmp_path / "a", steps=4, save_every=2, eval_every=2, eval_shards=[shards], eval_split="all",
             eval_max_samples=2, eval_batch_size=2, eval_num_beams=1, eval_max_new_tokens=3, keep_checkpoints=0)
    ref = {}
    _train(kw, _record_steps(ref))
    assert os.path.isfile(tmp_path / "a" / "eval" / "step-00000002.json")
    # resume a fresh run from the step-2 checkpoint (taken just before the step-2 evaluation)
    os.makedirs(tmp_path / "b" / "checkpoints")
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000002", tmp_path / "b" / "checkpoints" / "step-00000002")
    resumed = {}
    _train({**kw, "out": str(tmp_path / "b"), "resume": True}, _record_steps(resumed))
    assert sorted(resumed) == [3, 4]
    assert ref[3]["loss"] != ref[4]["loss"]
    _same_steps(resumed, ref, [3, 4])


def test_resume_refuses_changed_optimisation_settings_and_prunes_stale_tmp(tiny_model, shards, tmp_path):
    kw = _kw(tiny_model, shards, tmp_path / "out", steps=2)
    _train(kw)
    stale = tmp_path / "out" / "checkpoints" / "step-00000007.tmp"
    os.makedirs(stale)
    (stale / "model.safetensors").write_bytes(b"half written")
    for change, msg in [({"lr": 1e-3}, "lr: checkpoint 0.005 vs now 0.001"),
                        ({"steps": 4}, "total_steps: checkpoint 2 vs now 4"),
                        ({"schedule": "linear"}, "schedule: checkpoint 'cosine' vs now 'linear'"),
                        ({"weight_decay": 0.1}, "weight_decay: checkpoint 0.01 vs now 0.1")]:
        with pytest.raises(ValueError, match="optimisation settings") as info:
            _train({**kw, "resume": True, **change})
        assert msg in str(info.value)
    assert not stale.exists()
    # the unchanged settings resume (to the end: nothing left to do)
    assert _train({**kw, "resume": True})["steps"] == 2


def test_no_weight_decay_on_biases_and_norms(tiny_model, shards, tmp_path):
    """As transformers' Trainer.get_decay_parameter_names: LayerNorm weights and all biases are exempt."""
    from groundforge.train.loop import Trainer, TrainConfig

    trainer = Trainer(TrainConfig(**_kw(tiny_model, shards, tmp_path / "out", steps=1, weight_decay=0.05)))
    by_id = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = {g["weight_decay"]: [by_id[id(p)] for p in g["params"]] for g in trainer.optimizer.param_groups}
    assert set(groups) == {0.05, 0.0}
    norms = {f"{m}.{n}" for m, mod in trainer.model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
             for n, _ in mod.named_parameters(recurse=False)}
    biases = {n for n in by_id.values() if n.endswith(".bias")}
    assert norms and biases and norms | biases <= set(groups[0.0])
    assert not any(n.endswith(".bias") for n in groups[0.05])
    linear = {f"{m}.weight" for m, mod in trainer.model.named_modules()
              if isinstance(mod, torch.nn.Linear)} & set(by_id.values())     # lm_head is tied: listed once
    assert linear and linear <= set(groups[0.05])
    assert sum(len(v) for v in groups.values()) == len(trainer.params)


def test_truncated_targets_and_prompts_are_counted(tiny_model, shards, tmp_path):
    from groundforge.train.collate import Florence2Collator
    from groundforge.train.data import load_image
    from groundforge.train.model import load_processor

    summary = _train(_kw(tiny_model, shards, tmp_path / "out", steps=2, max_target_length=3))
    assert summary["truncated"] == {"target": 4}
    lines = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [line["truncated"] for line in lines] == [{"target": 2}, {"target": 4}]

    proc = load_processor(tiny_model)
    recs = [make_record(0), make_record(1, task="count_class")]
    samples = [dict(r, image=load_image(r["image"], "x")) for r in recs]
    lengths = [len(proc(text=r["prompt"], images=s["image"])["input_ids"][0]) for r, s in zip(recs, samples)]
    limit = min(lengths) + 1                   # only the longer prompt is cut
    assert max(lengths) > limit
    batch = Florence2Collator(proc, max_source_length=limit)(samples)
    assert batch["truncated"] == {"prompt": 1}
    assert batch["inputs"]["input_ids"].shape[1] == limit


def test_gradient_checkpointing_gives_the_same_step(tiny_model, shards, tmp_path):
    from groundforge.train.loop import Trainer, TrainConfig

    runs = {}
    for flag in (False, True):
        trainer = Trainer(TrainConfig(**_kw(tiny_model, shards, tmp_path / str(flag), steps=2,
                                            gradient_checkpointing=flag)))
        assert any(getattr(m, "gradient_checkpointing", False) for m in trainer.model.modules()) == flag
        got = {}
        trainer.run(_record_steps(got))
        runs[flag] = got
    for step in (1, 2):
        assert runs[True][step]["ids"] == runs[False][step]["ids"]
        assert runs[True][step]["loss"] == pytest.approx(runs[False][step]["loss"], rel=1e-5)
        assert runs[True][step]["grad_norm"] == pytest.approx(runs[False][step]["grad_norm"], rel=1e-4)


def test_validation_loss_and_tensorboard(tiny_model, shards, tmp_path):
    """Evaluation during training logs a validation loss (the mean label-token loss of the eval records,
    checked here against the model's own loss on one batch of them) to metrics.jsonl and, with
    --report-to tensorboard, to TensorBoard event files."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from groundforge.train.collate import Florence2Collator
    from groundforge.train.data import load_image
    from groundforge.train.model import load_model, load_processor

    eval_dir = str(tmp_path / "val")
    recs = [make_record(40 + i, split="val") for i in range(3)]
    write_shards(eval_dir, recs, n_files=1, row_group_size=3, prefix="val")
    summary = _train(_kw(tiny_model, shards, tmp_path / "out", steps=2, eval_every=2, eval_shards=[eval_dir],
                         eval_max_samples=3, eval_batch_size=3, eval_num_beams=1, eval_max_new_tokens=2,
                         report_to="tensorboard"))
    line = [json.loads(x) for x in open(tmp_path / "out" / "metrics.jsonl")][-1]
    model, processor = load_model(summary["final"]), load_processor(summary["final"])
    model.eval()
    batch = Florence2Collator(processor)([dict(r, image=load_image(r["image"], "x")) for r in recs])
    with torch.no_grad():
        expected = model(**batch["inputs"]).loss.item()
    assert line["val_loss"] == pytest.approx(expected, rel=1e-4)
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert events.Scalars("eval/val_loss")[0].value == pytest.approx(expected, rel=1e-4)
    assert "eval/rec/acc@0.5" in events.Tags()["scalars"]
