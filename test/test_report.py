"""Report building blocks: plots as PNG bytes, projected arrows, HTML and result files."""

import csv
import json

import numpy as np
import pytest

from failrecov_ros.core.camera import Intrinsics
from failrecov_ros.evaluation import report

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_png_and_reproducible():
    confusion = report.confusion_png(["none", "slip", "slip"], ["none", "none", "slip"])
    assert confusion.startswith(PNG)
    assert confusion == report.confusion_png(["none", "slip", "slip"], ["none", "none", "slip"])
    assert report.bars_png({"a": 0.5, "b": 1.0, "skipped": None}, "acc").startswith(PNG)
    assert report.histogram_png([1.0, 2.0, 2.5, 8.0], "latency", "ms").startswith(PNG)
    assert report.histogram_png([], "nothing", "ms").startswith(PNG)
    rgb = np.zeros((48, 64, 3), np.uint8)
    plain = report.frame_png(rgb, text="stall (0.9)")
    with_arrow = report.frame_png(rgb, arrow=((10, 10), (40, 30)))
    assert plain.startswith(PNG) and with_arrow.startswith(PNG) and plain != with_arrow
    with pytest.raises(ValueError, match="2 labels for 1"):
        report.confusion_png(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="HxWx3"):
        report.frame_png(np.zeros((4, 4)))


def test_project_arrow_hand_computed():
    camera = Intrinsics(100, 100, 100.0, 100.0, 50.0, 50.0)
    # base = optical frame; tool 1 m ahead; +0.1 m in x moves 100 * 0.1 / 1 = 10 px right
    arrow = report.project_arrow(camera, np.eye(4), (0.0, 0.0, 1.0), (0.1, 0.0, 0.0))
    np.testing.assert_allclose(arrow, [[50.0, 50.0], [60.0, 50.0]])
    # scale 2 doubles the drawn length; a 0.5 m camera offset along z halves it again
    shifted = np.eye(4)
    shifted[2, 3] = 1.0
    np.testing.assert_allclose(
        report.project_arrow(camera, shifted, (0, 0, 1), (0.1, 0, 0), scale=2.0),
        [[50.0, 50.0], [60.0, 50.0]])
    assert report.project_arrow(camera, np.eye(4), (0, 0, -1), (0.1, 0, 0)) is None  # behind
    assert report.project_arrow(None, np.eye(4), (0, 0, 1), (0.1, 0, 0)) is None


def test_look_at_transform_hand_computed():
    # at (0, 0, 1) looking along +x: optical z = +x, optical x (right) = -y, optical y = -z
    transform = report.look_at_transform((0, 0, 1), (1, 0, 1))
    np.testing.assert_allclose(transform[:3, :3], [[0, -1, 0], [0, 0, -1], [1, 0, 0]],
                               atol=1e-12)
    camera = Intrinsics(100, 100, 100.0, 100.0, 50.0, 50.0)
    # 2 m ahead on the axis: the centre; moving 0.2 m to -y goes right by 100 * 0.2 / 2 px
    arrow = report.project_arrow(camera, transform, (2, 0, 1), (0, -0.2, 0))
    np.testing.assert_allclose(arrow, [[50.0, 50.0], [60.0, 50.0]])
    with pytest.raises(ValueError, match="straight up"):
        report.look_at_transform((0, 0, 1), (0, 0, 0))


def test_html_and_files_carry_provenance(tmp_path):
    record = report.provenance(model={"name": "m"}, data=["a.mcap"])
    for key in ("date", "command", "git_commit", "hostname", "cpu", "cores", "model", "data"):
        assert key in record
    assert record["cores"] >= 1 and record["model"] == {"name": "m"}
    table = report.table_html([{"a": "<b>", "b": 0.123456}], ["a", "b"])
    assert "&lt;b&gt;" in table and "0.1235" in table
    png = report.bars_png({"x": 1.0}, "t")
    page = report.write_html(tmp_path / "r.html", "Title", [("One", report.img_html(png, "x")),
                                                            ("Two", table)], record)
    text = page.read_text()
    assert "<h2>One</h2>" in text and "data:image/png;base64," in text
    assert "Provenance" in text and record["hostname"] in text
    report.write_csv(tmp_path / "r.csv", [{"a": 1, "b": None}], provenance_record=record)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("# date: ")
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert rows == [{"a": "1", "b": ""}]
    report.write_json(tmp_path / "r.json", {"x": float("nan"), "v": np.float32(2.0)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "v": 2.0}


def test_checkpoint_hash_changes_with_content(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"1")
    first = report.checkpoint_hash(folder)
    (folder / "w.bin").write_bytes(b"2")
    assert report.checkpoint_hash(folder) != first and len(first) == 64
    assert report.checkpoint_hash(tmp_path / "absent") is None
