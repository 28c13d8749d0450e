"""Round trips and crash recovery of the sample store, on synthetic rows in tmp_path."""

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from failrecov_ros.datagen import dataset
from failrecov_ros.datagen.dataset import (
    ChunkStore,
    decode_frames,
    encode_frames,
    open_or_create,
    write_card,
)
from failrecov_ros.evaluation import metrics

CHUNK = 4  # attempts per chunk
CONFIG = {"robot": "fr3", "chunk_size": CHUNK, "generators": ["slip", "failsafe"]}


def make_row(attempt, pair, accepted, generator="slip", failure_type="translation_x",
             rng=None, score=0.5):
    rng = rng or np.random.default_rng(attempt * 10 + pair)
    n = 4
    return {
        "sample_id": f"a{attempt:09d}-{pair}", "attempt": attempt, "accepted": accepted,
        "generator": generator, "failure_type": failure_type, "stage": "grasp",
        "task": "pick_cube", "instruction": "pick up the red cube", "episode_seed": 1000 + attempt,
        "failed": True, "label_json": json.dumps({"failure": failure_type}),
        "label_dream2fix": "dx: +2", "label_failsafe": "Move left.",
        "ee_delta": [0.01 * pair, 0.0, -0.02, 0.0, 0.0, 0.1, 1.0] if pair else [],
        "directive": {"dir_x": 1, "bins_x": 2, "dir_y": 0, "bins_y": 0, "dir_z": -1,
                      "bins_z": 1, "gripper": "open", "keyframe": 3},
        "frames": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) if accepted else None,
        "frame_times": [0.1 * i for i in range(n)],
        "joint_positions": rng.normal(size=(n, 7)).tolist(),
        "gripper_width": [0.04] * n,
        "tcp_pose": [[0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]] * n,
        "parameters_json": json.dumps({"offset": 0.02}), "variation_json": "{}",
        "scores_json": json.dumps({"visible": score, "moved": accepted}),
        "reasons": [] if accepted else ["not_visible"], "error": "",
    }


def synthetic_chunks():
    """Chunk 0: 3 slip/translation_x accepted, 1 rejected; chunk 1 mixes generators."""
    chunk0 = [make_row(0, 0, True, score=0.9), make_row(0, 1, True, score=0.7),
              make_row(1, 0, False, score=0.1), make_row(2, 0, True, score=0.8)]
    failsafe = {"generator": "failsafe", "failure_type": "delay_close"}
    chunk1 = [make_row(4, 0, False, score=0.2, **failsafe),
              make_row(5, 0, True, score=0.6, **failsafe),
              make_row(6, 0, False, score=0.3, **failsafe)]
    chunk1.append({**make_row(7, 0, False, score=0.0), "error": "RuntimeError: boom",
                   "reasons": ["crashed", "not_visible"]})
    return {0: chunk0, 1: chunk1}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep datasets offline and its caches inside tmp_path."""
    cache = tmp_path / "hf"
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "HF_MODULES_CACHE"):
        monkeypatch.setenv(name, str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache, raising=False)
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", cache / "modules", raising=False)
    return cache


def test_features_round_trip_through_datasets():
    import datasets

    features = datasets.Features.from_dict(dataset.FEATURES)
    assert features.to_dict() == dataset.FEATURES
    assert features.arrow_schema.remove_metadata() == dataset.SAMPLE_SCHEMA.remove_metadata()
    assert "frames" not in dataset.ATTEMPT_SCHEMA.names
    assert dataset.ATTEMPT_SCHEMA.metadata[b"huggingface"]


def test_round_trip_through_datasets(tmp_path, hf_cache):
    out = tmp_path / "out"
    store = open_or_create(out, CONFIG, seed=7)
    chunks = synthetic_chunks()
    chunks[2] = [make_row(8, 0, False)]  # a chunk with nothing accepted: empty shard
    for chunk in (2, 1, 0):  # commit order must not matter
        store.commit(chunk, chunks[chunk])
    assert store.done_chunks() == {0, 1, 2}
    assert not store.data_path(2).exists()  # datasets cannot read a zero-row shard
    # Same rows, another store (another worker count): byte-identical shards.
    again = ChunkStore(tmp_path / "again")
    again.commit(1, chunks[1])
    assert again.data_path(1).read_bytes() == store.data_path(1).read_bytes()
    assert again.attempts_path(1).read_bytes() == store.attempts_path(1).read_bytes()

    loaded = dataset.load_dataset(out, cache_dir=hf_cache)
    expected = [r for c in (0, 1) for r in chunks[c] if r["accepted"]]
    assert [r["sample_id"] for r in loaded] == [r["sample_id"] for r in expected]
    for got, want in zip(loaded, expected, strict=True):
        assert len(got["frames"]) == 4
        assert got["frames"][0].mode == "RGB"
        pixels = np.stack([np.asarray(image) for image in got["frames"]])
        np.testing.assert_array_equal(pixels, want["frames"])
        assert got["joint_positions"] == want["joint_positions"]
        assert got["tcp_pose"] == want["tcp_pose"]
        assert got["directive"] == want["directive"]
        assert got["ee_delta"] == want["ee_delta"]
        assert got["accepted"] is True and got["attempt"] == want["attempt"]

    attempts = store.read_attempts()
    assert [r["sample_id"] for r in attempts] == [r["sample_id"] for c in (0, 1)
                                                  for r in chunks[c]] + ["a000000008-0"]
    assert "frames" not in attempts[0]
    assert json.loads(attempts[2]["scores_json"]) == {"visible": 0.1, "moved": False}


def test_staging_survives_a_crash(tmp_path, caplog):
    out = tmp_path / "out"
    store = open_or_create(out, CONFIG)
    rows = synthetic_chunks()[0]
    store.stage(0, 0, rows[:2])
    store.stage(0, 1, rows[2:3])
    store.stage(0, 3, [])  # an attempt that yielded nothing still counts as done
    store.stage(0, 2, rows[3:])
    staging = store.staging_dir(0)
    # Crash: a half-written temp file and a truncated attempt file.
    (staging / "attempt-000000002.parquet.123.tmp").write_bytes(b"PAR1 partial")
    broken = staging / "attempt-000000002.parquet"
    broken.write_bytes(broken.read_bytes()[:200])

    with caplog.at_level(logging.WARNING):
        staged = open_or_create(out, CONFIG).staged(0)
    assert sorted(staged) == [0, 1, 3]
    assert "corrupt" in caplog.text
    assert [r["sample_id"] for r in staged[0]] == ["a000000000-0", "a000000000-1"]
    assert staged[3] == []
    np.testing.assert_array_equal(decode_frames(staged[0][1]["frames"]), rows[1]["frames"])
    assert not list(staging.glob("*.tmp")) and not broken.exists()

    # Resume: redo attempt 2, commit staged rows (encoded frames) with the new ones.
    merged = staged[0] + staged[1] + rows[3:]
    store.commit(0, merged)
    assert not staging.exists()
    assert store.done_chunks() == {0}
    assert store.attempt_count() == 4
    table = pq.read_table(store.data_path(0))
    assert table.column("sample_id").to_pylist() == [r["sample_id"] for r in rows
                                                      if r["accepted"]]
    data_frames = table.column("frames").to_pylist()[2]
    np.testing.assert_array_equal(decode_frames(data_frames), rows[3]["frames"])


def test_done_chunks_needs_both_files(tmp_path):
    store = open_or_create(tmp_path, CONFIG)
    chunks = synthetic_chunks()
    store.commit(0, chunks[0])
    store.commit(1, chunks[1])
    store.attempts_path(1).unlink()  # crash between the data and the attempts write
    assert store.done_chunks() == {0}
    assert [r["attempt"] for r in store.read_attempts()] == [0, 0, 1, 2]


def test_manifest_mismatch_is_refused(tmp_path):
    open_or_create(tmp_path, CONFIG, seed=1)
    assert open_or_create(tmp_path, dict(CONFIG), seed=1).done_chunks() == set()
    with pytest.raises(ValueError, match="robot"):
        open_or_create(tmp_path, {**CONFIG, "robot": "stretch"}, seed=1)
    with pytest.raises(ValueError, match="seed"):
        open_or_create(tmp_path, CONFIG, seed=2)
    with pytest.raises(ValueError, match="extra"):
        open_or_create(tmp_path, {**CONFIG, "extra": 1}, seed=1)
    assert json.loads((tmp_path / "manifest.json").read_text())["config"] == CONFIG


def test_open_cleans_up_after_crash(tmp_path):
    store = open_or_create(tmp_path, CONFIG)
    store.stage(0, 0, synthetic_chunks()[0][:1])
    (tmp_path / "data" / "chunk-00000.parquet.9.tmp").write_bytes(b"x")
    store.commit(0, synthetic_chunks()[0])
    store.stage(0, 0, [])  # staging left behind by a crash just after commit
    open_or_create(tmp_path, CONFIG)
    assert not store.staging_dir(0).exists()
    assert not list((tmp_path / "data").glob("*.tmp"))


def test_card_counts_and_retention(tmp_path):
    store = open_or_create(tmp_path, CONFIG)
    for chunk, rows in synthetic_chunks().items():
        store.commit(chunk, rows, attempts=range(chunk * CHUNK, (chunk + 1) * CHUNK))
    text = write_card(tmp_path, command="ros2 run failrecov_ros datagen --n 8",
                      config=CONFIG, target_samples=10)
    assert (tmp_path / "README.md").read_text() == text
    assert text.startswith("---\n")
    assert "path: data/*.parquet" in text and "config_name: default" in text
    assert "ros2 run failrecov_ros datagen --n 8" in text and "robot: fr3" in text
    # Accepted: translation_x 3 (slip), delay_close 1 (failsafe).
    assert "| translation_x | 3 |" in text and "| delay_close | 1 |" in text
    assert "| slip | 3 |" in text and "| failsafe | 1 |" in text
    # Retention: translation_x 3/5 (incl. the crashed row), delay_close 1/3, slip 3/5.
    assert "| translation_x | 3 | 5 | 60.0% |" in text
    assert "| delay_close | 1 | 3 | 33.3% |" in text
    assert "| slip | 3 | 5 | 60.0% |" in text and "| failsafe | 1 | 3 | 33.3% |" in text
    assert "| not_visible | 4 |" in text and "| crashed | 1 |" in text
    # visible: mean of 0.9,0.7,0.1,0.8,0.2,0.6,0.3,0.0 = 0.45, min 0; moved: 4 of 8 true.
    assert "| visible | 0.45 | 0 | 8 |" in text and "| moved | 0.5 | 0 | 8 |" in text
    assert "accepted samples: 4 (target: 10)" in text
    assert "attempts: 8 (8 candidate rows)" in text and "crashed attempts: 1" in text


def test_card_reports_how_far_labels_of_one_run_agree(tmp_path):
    store = open_or_create(tmp_path, CONFIG)
    # One run (attempt 3), three windows: deltas +x, +x and -x pairwise agree 1, -1, -1.
    rows = [make_row(3, pair, True) for pair in (1, 2, 3)]
    rows[2]["ee_delta"] = [-0.03, 0.0, 0.02, 0.0, 0.0, -0.1, -1.0]
    store.commit(0, rows, attempts=[3])
    text = write_card(tmp_path, command="datagen", config=CONFIG, target_samples=None)
    section = text.split("## Label agreement within a failed run")[1].split("## ")[0]
    assert "| translation_x | 3 | -0.3" in section  # about (1 - 1 - 1) / 3
    expected = metrics.label_agreement([(0, "translation_x", r["ee_delta"]) for r in rows])
    assert f"| translation_x | 3 | {expected['translation_x'][1]:.3f} |" in section


def test_encode_frames_validates():
    with pytest.raises(ValueError, match="uint8"):
        encode_frames(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        encode_frames(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        encode_frames(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert decode_frames(encode_frames(rgb)).tobytes() == rgb.tobytes()
    jpeg = encode_frames(rgb, image_format="jpeg", quality=50)
    assert jpeg[0]["bytes"][:2] == b"\xff\xd8" and decode_frames(jpeg).shape == rgb.shape


def test_rows_with_wrong_keys_are_refused(tmp_path):
    row = make_row(0, 0, True)
    del row["stage"]
    with pytest.raises(ValueError, match="stage"):
        ChunkStore(tmp_path).commit(0, [row])
