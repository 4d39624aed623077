"""The local runner's mode: in-process for a small input (said in one line), worker processes otherwise; an
explicit --direct_running_mode always wins."""
from __future__ import annotations

import re
import subprocess
import sys

from groundforge.pipeline import options


def _mode(args, size_hint, lines=None):
    from apache_beam.options.pipeline_options import DirectOptions, TypeOptions

    opts = options.pipeline_options(args, size_hint=size_hint, echo=(lines.append if lines is not None else None))
    return opts.view_as(DirectOptions).direct_running_mode, opts.view_as(TypeOptions).pipeline_type_check


def test_small_input_runs_in_process_and_says_how_to_override():
    lines = []
    assert _mode([], 1000, lines) == ("in_memory", False)
    assert len(lines) == 1 and "--direct_running_mode=multi_processing" in lines[0]


def test_large_or_unknown_input_uses_worker_processes_silently():
    lines = []
    assert _mode([], options.SMALL_INPUT_BYTES + 1, lines)[0] == "multi_processing"
    assert _mode([], None, lines)[0] == "multi_processing"
    assert lines == []


def test_an_explicit_mode_or_type_check_wins():
    lines = []
    assert _mode(["--direct_running_mode=multi_processing"], 10, lines) == ("multi_processing", True)
    assert _mode(["--direct_running_mode", "in_memory", "--pipeline_type_check"], None, lines) == ("in_memory", True)
    assert lines == []


def test_input_bytes_sums_files_and_folders_and_is_unknown_for_remote_or_missing(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 10)
    (tmp_path / "b").write_bytes(b"y" * 5)
    assert options.input_bytes([str(tmp_path / "d"), str(tmp_path / "b"), ""]) == 15
    assert options.input_bytes([str(tmp_path / "b"), "gs://bucket/x.json"]) is None
    assert options.input_bytes([str(tmp_path / "missing")]) is None


def test_the_cli_says_the_choice_and_quiet_silences_it(tmp_path):
    def build(*flags):
        return subprocess.run([sys.executable, "-m", "groundforge.pipeline.cli", *flags, "build", "counting", "--out",
                               str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              check=True)

    said = build()
    assert re.search(r"small input \(\d+ KB\): running in this process", said.stderr), said.stderr
    assert build("-q").stderr == ""


def test_a_small_annotation_file_with_a_large_image_folder_is_not_small(tmp_path):
    """The image folder counts: a Roboflow export's JSON is kilobytes, its images gigabytes."""
    from groundforge.pipeline.config import make_config
    from groundforge.pipeline.registry import get_builder
    from helpers import write_coco

    coco = write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], [])
    builder = get_builder("counting")
    config = make_config(builder.config, {"coco": str(coco), "images": str(tmp_path / "images"),
                                          "out": str(tmp_path / "out")})
    small = builder.size_hint(config, builder.prepare(config))
    assert small is not None and options.local_mode(small) == "in_memory"
    (tmp_path / "images" / "big.bin").write_bytes(b"\0" * (options.SMALL_INPUT_BYTES + 1))
    assert options.local_mode(builder.size_hint(config, builder.prepare(config))) == "multi_processing"
