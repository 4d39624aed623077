"""Captions/s of the GRIT text stage (`transforms.nounphrases.extract`) against a bare `nlp.pipe`
loop with the same model, disabled components and batch size, on the same captions.

    python bench/grit_text.py [--n 5000] [--batch-size 256] [--repeat 3] [--model en_core_web_sm]

Runs alternate and the best of `--repeat` is kept for each, so a noisy shared machine hurts both
sides alike; process CPU time is printed next to wall time because it is steadier under load.
Goal: ratio >= 0.9.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.nounphrases import extract, load_spacy  # noqa: E402

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
    bare(nlp, texts[:200], args.batch_size)  # warm-up
    best = {"bare": [float("inf")] * 2, "stage": [float("inf")] * 2}
    for _ in range(args.repeat):  # interleaved, so load from other processes hits both
        for name, fn in (("bare", bare), ("stage", stage)):
            best[name] = [min(a, b) for a, b in zip(best[name], timed(fn, nlp, texts, args.batch_size))]
    n = len(texts)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"spacy model {nlp.meta['name']} {nlp.meta['version']}, pipes {nlp.pipe_names}")
    print(f"captions: {n}, batch size {args.batch_size}, best of {args.repeat} (wall | cpu time)")
    print(f"bare nlp.pipe:         {n / best['bare'][0]:8.1f} | {n / best['bare'][1]:8.1f} captions/s")
    print(f"extract (chunks+exps): {n / best['stage'][0]:8.1f} | {n / best['stage'][1]:8.1f} captions/s")
    print(f"ratio: {best['bare'][0] / best['stage'][0]:.3f} | {best['bare'][1] / best['stage'][1]:.3f} "
          "(goal >= 0.9)")


if __name__ == "__main__":
    main()
