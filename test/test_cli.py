"""The `failrecov` command: schema output, validation exit codes, and the DDS round trip."""

import json
import subprocess
import sys

import pytest

from failrecov_ros.cli import main
from failrecov_ros.core.schema import MODEL_OUTPUT_SCHEMA


def test_schema_command_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == MODEL_OUTPUT_SCHEMA


def test_validate_reports_each_line_and_fails_on_invalid(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "Sub-task: grasp.<No>."}) + "\n")
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Sub-task: grasp.<No>."}) + "\n"
                   + json.dumps({"text": "RESULT=PERHAPS;"}) + "\n")
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "1: INVALID" in out and "1 valid, 1 invalid" in out


def test_validate_names_the_broken_line(tmp_path, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{not json\n')
    assert main(["validate", str(broken)]) == 2
    assert f"{broken}:2: not a JSON object" in capsys.readouterr().err


def test_roundtrip_runs_end_to_end_over_dds():
    result = subprocess.run([sys.executable, "-m", "failrecov_ros.cli", "roundtrip", "--rate",
                             "50"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "roundtrip: sent 8, received 8 over DDS, 5 valid, 3 rejected as unknown, " \
           "0 messages breaking the schema" in result.stdout


def test_expert_command_reports_rates_and_fails_below_the_requirement(capsys):
    assert main(["expert", "--task", "pick_cube", "--seeds", "3", "--require", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "pick_cube: 3/3 = 100.0%" in out
    # A requirement above 100% can never be met: the exit code must say so.
    assert main(["expert", "--task", "pick_cube", "--seeds", "1", "--require", "1.01"]) == 1


def test_expert_command_rejects_unknown_tasks():
    with pytest.raises(SystemExit):
        main(["expert", "--task", "bogus"])


def test_collect_takes_fault_weights_and_a_weak_close_mechanism(capsys):
    from failrecov_ros.cli import build_parser

    args = build_parser().parse_args(["collect", "--out", "x", "--episodes", "1",
                                      "--weak-close", "closure", "--fault-weights",
                                      "none=0.2,weak_close=0.8"])
    assert args.weak_close == "closure"
    assert args.fault_weights == {"none": 0.2, "weak_close": 0.8}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["collect", "--out", "x", "--episodes", "1",
                                   "--fault-weights", "none:0.2"])
    assert "expected NAME=WEIGHT, got 'none:0.2'" in capsys.readouterr().err
