"""train.data: shard discovery, worker/rank splitting, shuffling, resume positions, mixing, images."""
from __future__ import annotations

import os
from collections import Counter

import pytest
from train_fixtures import image_bytes_of, make_record, write_shard, write_shards

torch = pytest.importorskip("torch")


def _ids(samples):
    return [s["id"] for s in samples]


def _list_collate(samples):
    return samples


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """23 records in 3 files with 3-row row groups: file sizes 8, 8, 7 -> 9 units."""
    folder = str(tmp_path_factory.mktemp("shards"))
    records = [make_record(i) for i in range(23)]
    write_shards(folder, records, n_files=3, row_group_size=3)
    return folder, sorted(r["id"] for r in records)


def _sources(pattern):
    from groundforge.train.data import discover, list_units

    return list_units(discover([pattern]))


def test_shard_specs_and_mix_parsing():
    from groundforge.train.data import parse_mix, parse_shard_spec

    assert parse_shard_spec("refcoco=out/refcoco/data/*.parquet") == ("refcoco", "out/refcoco/data/*.parquet")
    assert parse_shard_spec("out/*.parquet") == ("default", "out/*.parquet")
    assert parse_shard_spec("gs://b/lang=en/*.parquet") == ("default", "gs://b/lang=en/*.parquet")
    assert parse_shard_spec("data/x=1/*.parquet") == ("default", "data/x=1/*.parquet")
    assert parse_mix("refcoco=0.5, counting=1.5") == {"refcoco": 0.5, "counting": 1.5}
    for bad, msg in [("refcoco", "NAME=WEIGHT"), ("a=x", "not a number"), ("a=0", "must be > 0"),
                     ("a=1,a=2", "twice"), ("", "empty")]:
        with pytest.raises(ValueError, match=msg):
            parse_mix(bad)


def test_discovery_units_and_missing_pattern(shard_dir, tmp_path):
    from groundforge.train.data import discover, list_units

    folder, _ = shard_dir
    sources = list_units(discover([folder]))            # a directory means its *.parquet
    assert list(sources) == ["default"]
    units = sources["default"]
    assert [(os.path.basename(u.file), u.row_group, u.rows) for u in units] == [
        ("train-00000-of-00003.parquet", 0, 3), ("train-00000-of-00003.parquet", 1, 3),
        ("train-00000-of-00003.parquet", 2, 2), ("train-00001-of-00003.parquet", 0, 3),
        ("train-00001-of-00003.parquet", 1, 3), ("train-00001-of-00003.parquet", 2, 2),
        ("train-00002-of-00003.parquet", 0, 3), ("train-00002-of-00003.parquet", 1, 3),
        ("train-00002-of-00003.parquet", 2, 1)]
    # a dataset output dir (with data/) and NAME=GLOB
    os.makedirs(tmp_path / "ds" / "data")
    write_shard(str(tmp_path / "ds" / "data" / "val-00000-of-00001.parquet"), [make_record(99)])
    assert {n: len(u) for n, u in list_units(discover([f"val={tmp_path / 'ds'}"])).items()} == {"val": 1}
    with pytest.raises(FileNotFoundError, match="no Parquet files match"):
        discover([str(tmp_path / "nothing" / "*.parquet")])


def test_every_row_exactly_once_across_ranks_and_workers(shard_dir):
    """2 ranks x 2 DataLoader workers, one epoch: the union of all streams is every row exactly once,
    and no two slots share a row group."""
    from groundforge.train.data import ShardStream, assign_units
    from torch.utils.data import DataLoader

    folder, all_ids = shard_dir
    sources = _sources(folder)
    seen, per_slot = [], {}
    for rank in range(2):
        ds = ShardStream(sources, epochs=1, rank=rank, world_size=2, shuffle_buffer=4, seed=7)
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=_list_collate)
        for batch in loader:
            for s in batch:
                seen.append(s["id"])
                per_slot.setdefault(s["_slot"], []).append(s["id"])
    assert sorted(seen) == all_ids
    assert len(seen) == len(set(seen)) == 23
    assert sorted(per_slot) == [0, 1, 2, 3]
    # slot contents are exactly the rows of the row groups dealt to it (balanced: 6/5/6/6 rows)
    dealt = assign_units(sources["default"], 4, ranks=2)
    assert [sum(u.rows for u in slot) for slot in dealt] == [6, 5, 6, 6]
    assert [len(per_slot[s]) for s in range(4)] == [6, 5, 6, 6]


def test_ranks_get_units_before_second_workers():
    from groundforge.train.data import Unit, assign_units

    units = [Unit("default", "f", i, 10) for i in range(2)]
    slots = assign_units(units, 4, ranks=2)   # slots 0,1 = rank 0; 2,3 = rank 1
    assert [len(s) for s in slots] == [1, 0, 1, 0]


def test_shuffle_is_seeded_and_changes_per_epoch(shard_dir):
    from groundforge.train.data import ShardStream

    folder, all_ids = shard_dir
    sources = _sources(folder)

    def stream(**kw):
        return _ids(ShardStream(sources, epochs=2, decode_images=False, **kw).iter_slot(0, 1))

    a, b = stream(seed=1, shuffle_buffer=5), stream(seed=1, shuffle_buffer=5)
    assert a == b
    assert sorted(a[:23]) == sorted(a[23:]) == all_ids        # each epoch is a permutation
    assert a[:23] != a[23:]                                    # reshuffled per epoch
    assert a != stream(seed=2, shuffle_buffer=5)
    plain = _ids(ShardStream(sources, epochs=1, shuffle=False, decode_images=False).iter_slot(0, 1))
    assert plain != a[:23] and sorted(plain) == all_ids


def test_resume_position_replays_the_same_stream(shard_dir):
    from groundforge.train.data import ShardStream

    folder, _ = shard_dir
    sources = _sources(folder)
    full = list(ShardStream(sources, epochs=3, seed=3, shuffle_buffer=4).iter_slot(1, 2))
    assert [s["_pos"] for s in full] == list(range(1, len(full) + 1))
    for k in (1, 5, 12, len(full) - 1):
        rest = list(ShardStream(sources, epochs=3, seed=3, shuffle_buffer=4, start={1: k}).iter_slot(1, 2))
        assert _ids(rest) == _ids(full[k:])
        assert rest[0]["_pos"] == k + 1
    assert full[0]["image"].size == (48, 40) and full[0]["image"].mode == "RGB"


def test_mix_follows_weights_and_is_deterministic(tmp_path):
    from groundforge.train.data import ShardStream, discover, list_units

    write_shard(str(tmp_path / "a" / "a.parquet"), [make_record(i, dataset="a") for i in range(6)], 3)
    write_shard(str(tmp_path / "b" / "b.parquet"), [make_record(i, dataset="b") for i in range(4)], 2)
    sources = list_units(discover([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"]))
    ds = ShardStream(sources, weights={"a": 3.0, "b": 1.0}, decode_images=False, seed=5,
                     columns=("id", "dataset"))
    stream = ds.iter_slot(0, 1)
    first = [next(stream)["dataset"] for _ in range(800)]
    share = Counter(first)["a"] / 800
    assert 0.70 < share < 0.80
    again = ShardStream(sources, weights={"a": 3.0, "b": 1.0}, decode_images=False, seed=5,
                        columns=("id", "dataset")).iter_slot(0, 1)
    assert [next(again)["dataset"] for _ in range(800)] == first
    with pytest.raises(ValueError, match="different sources"):
        ShardStream(sources, weights={"a": 1.0})
    # without --mix, named sets form one pool: every row of both once per epoch, even when streaming forever
    pooled = ShardStream(sources, decode_images=False, seed=5, columns=("id", "dataset")).iter_slot(0, 1)
    epoch = [next(pooled)["dataset"] for _ in range(10)]
    assert Counter(epoch) == {"a": 6, "b": 4}


def test_path_only_images_resolve_inside_the_root(tmp_path):
    from groundforge.train.data import ShardStream, discover, list_units

    recs = [make_record(i, image_bytes=False) for i in range(3)]
    recs[2]["image"]["path"] = "../escape.jpg"
    shard = tmp_path / "shards" / "train-00000-of-00001.parquet"
    write_shard(str(shard), recs)
    for root in (tmp_path / "shards", tmp_path / "elsewhere"):
        os.makedirs(root / "images", exist_ok=True)
        for r in recs[:2]:
            (root / "images" / f"{r['id']}.jpg").write_bytes(image_bytes_of(r))
    (tmp_path / "escape.jpg").write_bytes(image_bytes_of(recs[0]))
    sources = list_units(discover([str(shard)]))
    ds = ShardStream(sources, epochs=1, shuffle=False)
    got = list(ds.iter_slot(0, 1))
    assert _ids(got) == [r["id"] for r in recs[:2]]       # the escaping path is skipped, not read
    assert ds.skipped == {"PathError": 1}
    assert got[0]["image"].getpixel((20, 20)) != (128, 128, 128)   # inside the drawn rectangle
    os.remove(tmp_path / "shards" / "images" / f"{recs[0]['id']}.jpg")
    ds = ShardStream(sources, epochs=1, shuffle=False, image_root=str(tmp_path / "elsewhere"))
    assert _ids(ds.iter_slot(0, 1)) == [r["id"] for r in recs[:2]]


def test_wrong_format_is_a_clear_error(tmp_path):
    from groundforge.train.data import ShardStream, discover, list_units

    rec = make_record(0)
    rec["format"] = "kosmos2"
    write_shard(str(tmp_path / "k.parquet"), [rec])
    ds = ShardStream(list_units(discover([str(tmp_path / "k.parquet")])), epochs=1)
    with pytest.raises(ValueError, match="rendered for format 'kosmos2'"):
        list(ds.iter_slot(0, 1))


def _broken(record: dict) -> dict:
    record["image"] = {"bytes": b"not an image", "path": None}
    return record


def test_a_mixed_source_with_fewer_row_groups_than_slots_reaches_every_slot(tmp_path):
    """`a` has one row group, `b` four; with 4 loader slots every slot must still draw `a` at its weight
    (dealing `a` to one slot only would make the overall share of `a` 1/8 instead of 1/2)."""
    from groundforge.train.data import ShardStream, discover, list_units

    write_shard(str(tmp_path / "a" / "a.parquet"), [make_record(i, dataset="a") for i in range(3)])
    write_shard(str(tmp_path / "b" / "b.parquet"), [make_record(i, dataset="b") for i in range(8)], 2)
    sources = list_units(discover([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"]))
    assert [len(sources["a"]), len(sources["b"])] == [1, 4]
    ds = ShardStream(sources, weights={"a": 1.0, "b": 1.0}, decode_images=False, seed=1, columns=("id", "dataset"))
    for slot in range(4):
        stream = ds.iter_slot(slot, 4)
        share = Counter(next(stream)["dataset"] for _ in range(400))["a"] / 400
        assert 0.4 < share < 0.6, (slot, share)


def test_a_file_in_two_sources_is_read_by_both(tmp_path):
    """Row-group caches are per source: the same file named twice is read twice, not half-consumed."""
    from groundforge.train.data import ShardStream, discover, list_units

    path = write_shard(str(tmp_path / "x.parquet"), [make_record(i) for i in range(6)])
    sources = list_units(discover([f"a={path}", f"b={path}"]))
    for weights in (None, {"a": 1.0, "b": 1.0}):
        ds = ShardStream(sources, weights=weights, epochs=1, shuffle_buffer=12, decode_images=False,
                         columns=("id",))
        counts = Counter(_ids(ds.iter_slot(0, 1)))
        assert len(counts) == 6 and set(counts.values()) == {2}, weights


def test_skips_reach_the_main_process_through_the_loader(tmp_path):
    """A record skipped in a DataLoader worker is counted in the batches: on the next sample of its slot,
    or on a tail marker when it is the last one (the collator drops the marker)."""
    from groundforge.train.collate import Florence2Collator
    from groundforge.train.data import ShardStream, discover, list_units
    from groundforge.train.tiny import build_processor
    from torch.utils.data import DataLoader

    write_shard(str(tmp_path / "s" / "a.parquet"), [make_record(0), _broken(make_record(1))])
    write_shard(str(tmp_path / "s" / "b.parquet"), [make_record(2), _broken(make_record(3)), make_record(4)])
    ds = ShardStream(list_units(discover([str(tmp_path / "s")])), epochs=1, shuffle=False)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=Florence2Collator(build_processor()))
    batches = list(loader)
    # workers alternate: 0 [rec 0], 1 [rec 2], 0 [tail marker], 1 [rec 4, with the skip of rec 3]
    assert [b["ids"] for b in batches] == [[make_record(i)["id"]] for i in (0, 2)] + [[], [make_record(4)["id"]]]
    assert [b["inputs"] is None for b in batches] == [False, False, True, False]
    bad = {"UnidentifiedImageError": 1}
    assert [b["skipped"] for b in batches] == [{}, {}, bad, bad]


def test_an_endless_stream_of_unreadable_images_fails_instead_of_hanging(tmp_path):
    from groundforge.train.data import ShardStream, discover, list_units

    path = write_shard(str(tmp_path / "bad.parquet"), [_broken(make_record(i)) for i in range(2)])
    ds = ShardStream(list_units(discover([path])))           # epochs=None: streams forever
    with pytest.raises(RuntimeError, match="none of its 2 records has a readable image"):
        next(ds.iter_slot(0, 1))
    assert ds.skipped == {"UnidentifiedImageError": 3}


def test_a_shard_without_the_record_columns_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from groundforge.train.data import ShardStream, discover, list_units

    pq.write_table(pa.table({"id": ["a"], "text": ["t"]}), str(tmp_path / "other.parquet"))
    ds = ShardStream(list_units(discover([str(tmp_path / "other.parquet")])), epochs=1)
    with pytest.raises(ValueError, match="no column task, format, prompt, target, image, width, height"):
        list(ds.iter_slot(0, 1))


def test_fsspec_urls_are_read_like_local_files(tmp_path):
    import fsspec
    from groundforge.train.data import ShardStream, discover, list_units

    local = write_shard(str(tmp_path / "x.parquet"), [make_record(i) for i in range(4)], 2)
    fs = fsspec.filesystem("memory")
    fs.pipe("/gf-test/data/train-00000-of-00001.parquet", open(local, "rb").read())
    try:
        sources = list_units(discover(["memory://gf-test"]))     # a dataset dir: its data/*.parquet
        assert [(u.file, u.row_group, u.rows) for u in sources["default"]] == [
            ("memory:///gf-test/data/train-00000-of-00001.parquet", 0, 2),
            ("memory:///gf-test/data/train-00000-of-00001.parquet", 1, 2)]
        got = list(ShardStream(sources, epochs=1, shuffle=False).iter_slot(0, 1))
        assert _ids(got) == [make_record(i)["id"] for i in range(4)] and got[0]["image"].size == (48, 40)
    finally:
        fs.rm("/gf-test", recursive=True)
