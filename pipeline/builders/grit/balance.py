"""GRIT stage 3 (optional): LLaVA CC3M-595K style concept balancing, as Beam combiners."""
from __future__ import annotations

import heapq

import apache_beam as beam
from groundforge.pipeline.builders.grit.plan import Balance
from groundforge.pipeline.emit import STATS, stat
from groundforge.transforms.grit import concept_key, selection_rank


class _CountAndSmallest(beam.CombineFn):
    """Per phrase: how many captions contain it, and its `k` lowest-ranked (rank, caption key) pairs. The
    candidate list is trimmed back to `k` whenever it reaches 2k, so adding is amortised O(log k)."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return 0, []

    def add_input(self, acc, value):
        count, best = acc
        best.append(value)
        if len(best) >= 2 * self.k:
            best = heapq.nsmallest(self.k, best)
        return count + 1, best

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), heapq.nsmallest(self.k, [v for a in accs for v in a[1]])

    def compact(self, acc):
        return acc[0], heapq.nsmallest(self.k, acc[1])

    def extract_output(self, acc):
        return self.compact(acc)


class BalanceConcepts(beam.PTransform):
    """Keep the items that `transforms.grit.balance_concepts` would select, computed distributedly: per phrase
    a count and the `max_per_phrase` captions of lowest `selection_rank` (one combiner), phrases seen fewer
    than `min_count` times select nothing, an item survives when any phrase selected its key. Output:
    {"items", "stats"} (stat `captions_not_selected`)."""

    def __init__(self, balance: Balance):
        super().__init__()
        self.balance = balance

    def expand(self, items):
        b = self.balance
        keyed = items | "KeyItems" >> beam.Map(lambda it: (it["key"], it))
        selected = (
            items
            | "PhraseRanks" >> beam.FlatMap(
                lambda it, seed: [(p, (selection_rank(seed, p, it["key"]), it["key"]))
                                  for p in sorted({concept_key(t) for t in it["phrases"]})], b.seed)
            | "PerPhrase" >> beam.CombinePerKey(_CountAndSmallest(b.max_per_phrase))
            | "Selected" >> beam.FlatMap(
                lambda kv, n: [(key, 1) for _, key in kv[1][1]] if kv[1][0] >= n else [], b.min_count))
        joined = ({"item": keyed, "selected": selected} | "Join" >> beam.CoGroupByKey()
                  | "Keep" >> beam.ParDo(_KeepSelected()).with_outputs(STATS, main="items"))
        return {"items": joined.items, "stats": joined[STATS]}


class _KeepSelected(beam.DoFn):
    """(key, {"item": items, "selected": marks}) -> the items when any phrase selected the key."""

    def process(self, element):
        _, grouped = element
        items = list(grouped["item"])
        if next(iter(grouped["selected"]), None) is None:
            if items:
                yield stat("captions_not_selected", len(items))
            return
        yield from items
