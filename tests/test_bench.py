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
