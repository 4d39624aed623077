"""Captions/s of the GRIT text stage against a bare `nlp.pipe` loop with the same model, disabled
components and batch size, on the same captions. Two forms of the stage are timed: the text step
itself (`transforms.nounphrases.extract`), and the Beam stage the pipeline runs
(`RunInference(pipeline.nlp.SpacyHandler)` on the in-memory DirectRunner, pipeline start-up included).

    python bench/grit_text.py [--n 5000] [--batch-size 256] [--repeat 3] [--model en_core_web_sm]

Runs alternate and the best of `--repeat` is kept for each, so a noisy shared machine hurts all
sides alike; process CPU time is printed next to wall time because it is steadier under load.
Goal: ratio >= 0.9.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from groundforge.transforms.nounphrases import extract, load_spacy  # noqa: E402

SUBJECTS = ["a dog", "two cats", "a young woman", "an old man", "a red car", "three children",
            "a brown horse", "a wire hanger", "a small boat", "a group of people"]
ACTIONS = ["sitting on", "standing next to", "playing with", "looking at", "parked near",
           "running across", "lying under", "holding"]
OBJECTS = ["a wooden bench", "a field of flowers", "the kitchen table", "a blue umbrella",
           "a pile of books", "the edge of a lake", "a paper cover that reads we heart our customers",
           "a remote and a cup of coffee"]
TAILS = ["", " at sunset", " in the park", " on a rainy day", ", with love", " while a man watches"]


def captions(n: int) -> list[str]:
    """n distinct templated captions, the same on every run."""
    combos = itertools.product(SUBJECTS, ACTIONS, OBJECTS, TAILS)
    out = []
    for i, (s, a, o, t) in enumerate(itertools.cycle(combos)):
        if i == n:
            break
        out.append(f"{s} {a} {o}{t}" + ("." if i % 3 == 0 else ""))
    return out


def bare(nlp, texts, batch_size):
    for _ in nlp.pipe(texts, batch_size=batch_size):
        pass


def stage(nlp, texts, batch_size):
    extract(texts, nlp, batch_size=batch_size)


def beam_stage(model, nlp, texts, batch_size):
    """The pipeline's text stage. In-memory runner: one process, so the handler's `load_spacy` gets the
    model loaded by `main` from the per-process cache instead of loading it again."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from groundforge.pipeline.handlers.spacy import SpacyHandler

    handler = SpacyHandler(model, batch_size=batch_size, drop_contained=False)  # as build_grit runs it
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as p:
        _ = (p | beam.Create(texts, reshuffle=False) | RunInference(handler)
             | beam.Map(lambda r: len(r.inference.chunks)))


def timed(fn, nlp, texts, batch_size) -> tuple[float, float]:
    """(wall, process CPU) seconds of one run."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(nlp, texts, batch_size)
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="en_core_web_sm")
    args = ap.parse_args(argv)

    nlp = load_spacy(args.model)
    texts = captions(args.n)
    sides = {"bare nlp.pipe": bare, "extract (chunks+exps)": stage,
             "RunInference stage": functools.partial(beam_stage, args.model)}
    for fn in sides.values():  # warm-up: first-run imports and Beam set-up stay out of the timings
        fn(nlp, texts[:200], args.batch_size)
    best = {name: [float("inf")] * 2 for name in sides}
    for _ in range(args.repeat):  # interleaved, so load from other processes hits every side
        for name, fn in sides.items():
            best[name] = [min(a, b) for a, b in zip(best[name], timed(fn, nlp, texts, args.batch_size))]
    n = len(texts)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"spacy model {nlp.meta['name']} {nlp.meta['version']}, pipes {nlp.pipe_names}")
    print(f"captions: {n}, batch size {args.batch_size}, best of {args.repeat} (wall | cpu time)")
    wall, cpu = best["bare nlp.pipe"]
    for name, (w, c) in best.items():
        ratio = "" if name == "bare nlp.pipe" else f"   ratio {wall / w:.3f} | {cpu / c:.3f} (goal >= 0.9)"
        print(f"{name + ':':23s}{n / w:8.1f} | {n / c:8.1f} captions/s{ratio}")


if __name__ == "__main__":
    main()
