"""`trackgo data inspect` finds broken shards; `trackgo data build` runs end to end."""
from __future__ import annotations

import argparse
import json
import shutil

import pytest

from trackgo_data import cli
from trackgo_data.inspect import inspect_shards
from trackgo_data.render import COLOURS
from trackgo_data.sample import encode_sample
from trackgo_data.shards import write_shards

from .synthetic import synthetic_sample


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="trackgo")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _problems(report):
    return " | ".join(m for _, _, m in report.problems)


def test_good_shard_passes(tmp_path):
    paths = write_shards([encode_sample(synthetic_sample(f"v{i}", 0, seed=i)) for i in range(2)], tmp_path, "s")
    report = inspect_shards(paths)
    assert report.ok and report.samples == 2, report.problems
    assert run_cli(["data", "inspect", str(paths[0])]) == 0


def test_missing_member_is_caught(tmp_path, capsys):
    m = encode_sample(synthetic_sample("v", 0))
    del m["trajectory.mp4"]
    paths = write_shards([m], tmp_path, "s")
    report = inspect_shards(paths)
    assert not report.ok and "missing member(s): trajectory.mp4" in _problems(report)
    assert run_cli(["data", "inspect", "--json", str(tmp_path / "*.tar")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["problems"][0]["key"] == "v-000000"


def test_stray_colour_track_outside_and_duplicate_key(tmp_path):
    s = synthetic_sample("v", 0)
    s.trajectory[2, 0, 0] = (10, 200, 30)  # not a component colour
    bad_colour = encode_sample(s)
    t = synthetic_sample("w", 0)
    t.tracks[1, 0, 0] = 500.0              # visible point far outside the 128-px frame
    outside = encode_sample(t)
    dup = encode_sample(synthetic_sample("w", 0, seed=3))
    paths = write_shards([bad_colour, outside], tmp_path, "a") + write_shards([dup], tmp_path, "b")
    text = _problems(inspect_shards(paths))
    assert "outside the component palette" in text
    assert "visible track point(s) outside" in text
    assert "key also in" in text


def test_colour_of_an_absent_component_is_caught(tmp_path):
    s = synthetic_sample("v", 0)
    s.trajectory[0, 0:4, 0:4] = COLOURS[4]  # a colour of the palette, but component 4 is not there
    report = inspect_shards(write_shards([encode_sample(s)], tmp_path, "s"))
    assert "outside the component palette" in _problems(report)


def test_truncated_shard_is_caught(tmp_path):
    (p,) = write_shards([encode_sample(synthetic_sample(f"v{i}", 0, seed=i)) for i in range(2)], tmp_path, "s")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    report = inspect_shards([p])
    assert not report.ok
    assert run_cli(["data", "inspect", str(p)]) == 1


def test_meta_mismatch_is_caught(tmp_path):
    s = synthetic_sample("v", 0)
    s.meta["num_frames"] = 99
    report = inspect_shards(write_shards([encode_sample(s)], tmp_path, "s"))
    assert "meta says 99" in _problems(report)


def test_cli_build_then_inspect(tmp_path, sample_videos, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_videos["carphone"], src / "carphone.mp4")
    out = tmp_path / "out"
    rc = run_cli(["data", "build", "--source", str(src), "--out", str(out), "--frames", "8", "--width", "256",
                  "--height", "144", "--max-clips", "1", "--set", "filters.min_median_motion=1.0",
                  "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accepted"] == 1
    assert run_cli(["data", "inspect", str(out)]) == 0
    cfg = json.loads((out / "build_config.json").read_text())["config"]
    assert cfg["clip"]["num_frames"] == 8 and cfg["filters"]["min_median_motion"] == 1.0
    with pytest.raises(SystemExit):
        run_cli(["data", "build", "--source", str(src)])  # --out is required
    assert run_cli(["data", "build", "--source", str(src), "--out", str(tmp_path / "o2"),
                    "--set", "clip.no_such_key=1"]) == 2


def test_build_help_set_example_is_a_real_key():
    """The ``--set`` example printed by ``trackgo data build --help`` must be accepted as is."""
    import contextlib
    import io
    import re

    parser = argparse.ArgumentParser(prog="trackgo")
    cli.register(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as printed:
        parser.parse_args(["data", "build", "--help"])
    example = re.search(r"--set KEY=VALUE\s+.*?--set\s+(\S+)", printed.getvalue(), re.S).group(1)
    args = parser.parse_args(["data", "build", "--source", "x", "--out", "y", "--set", example])
    cfg = cli.build_config_from_args(args)
    key, value = example.split("=")
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == float(value)
    with pytest.raises(Exception, match="min_motion_px"):   # the old example is rejected
        cli.build_config_from_args(parser.parse_args(["data", "build", "--source", "x", "--out", "y",
                                                      "--set", "filters.min_motion_px=2"]))
