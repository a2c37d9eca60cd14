"""`vlmrl bench clip` runs end to end and reports every column (functional, not a timed test)."""

import json

from tiny_clip import save_tiny_open_clip

from vlmrl.cli import main


def test_bench_clip_reports_each_batch_size(tmp_path, capsys):
    config_path, checkpoint = save_tiny_open_clip(tmp_path / "clip")
    args = ["bench", "clip", "--model", config_path, "--pretrained", checkpoint, "--batch-sizes", "1,4",
            "--size", "64", "--repeats", "1", "--device", "cpu", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["batch_size"] for row in report["rows"]] == [1, 4]
    for row in report["rows"]:
        for column in ("render_fps", "encoder_fps", "label_fps", "reward_net_fps", "peak_mem_mb"):
            assert row[column] > 0, column
        assert row["label_vs_encoder"] > 0 and row["net_vs_clip"] > 0


def test_bench_render_reports_each_vec_env(capsys):
    args = ["bench", "render", "--envs", "vlmrl/CartPole-v1", "--n-envs", "2", "--vec-envs", "dummy,subproc",
            "--size", "32", "--steps", "3", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(row["vec_env"], row["n_envs"]) for row in rows] == [("dummy", 2), ("subproc", 2)]
    assert all(row["frames_per_s"] > 0 for row in rows)


def test_bench_labels_prints_json_rows_against_a_real_server(capsys):
    from openai_test_server import OpenAITestServer

    with OpenAITestServer(model="test-vlm") as server:
        assert main(["bench", "labels", "--endpoint", server.base_url, "--concurrency", "2", "--pairs", "4",
                     "--frame-size", "16", "--json"]) == 0
        assert server.count() == 4 * 2  # two turns per pair; the rerun asked nothing
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["concurrency"], row["pairs"], row["failed"], row["rerun_requests"]) == (2, 4, 0, 0)


def test_every_bench_offers_json(capsys):
    import argparse

    from vlmrl import bench

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    for name in ("clip", "train", "labels", "render", "relabel", "async", "pebble", "main"):
        args = parser.parse_args(["bench", name, "--json"] + (["--endpoint", "http://x/v1"] if name == "labels" else []))
        assert args.json and callable(args.func), name
