"""Sharded delegated runs: the propagate operator with ``shards=N`` queues N delegated operations over disjoint
videos; real ``fiftyone delegated launch`` workers on one database run them at once; a killed worker's shard,
re-queued, completes with every frame labelled once. Runs against the throwaway database of conftest.py."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")
import fiftyone.operators as foo  # noqa: E402
from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402
from fiftyone.operators.executor import ExecutionRunState  # noqa: E402

from frtm_plugin.fo.runs import split_for_shards  # noqa: E402
from frtm_plugin.fo.runs import shard_states  # noqa: E402
from frtm_plugin.fo.sdk import run_config  # noqa: E402

URI = "@frtm/frtm-vos/propagate"
N = 8
PARAMS = {"prompt_field": "prompt", "label_field": "out", "model": "d-only", "max_size": 256, "delegate": True}


@pytest.fixture(scope="module")
def clip(demo_clip):
    return demo_clip(N)


def _dataset(name, clip, n_videos=4):
    path, gts = clip
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples([fo.Sample(filepath=str(path)) for _ in range(n_videos)])
    for s in ds.iter_samples(autosave=True):
        s.frames[1]["prompt"] = fo.Segmentation(mask=gts[0].astype(np.uint8))
    return ds


def _queued(ds):
    return [op for op in DelegatedOperationService().list_operations(dataset_name=ds.name,
                                                                     run_state=ExecutionRunState.QUEUED)]


def _assert_complete(ds):
    """Every video done, every frame labelled exactly once, all videos alike (the same clip)."""
    ds.reload()
    assert len(ds.match(fo.ViewField("out_frtm") != None)) == len(ds)  # noqa: E711
    reference = None
    for s in ds:
        frames = list(s.frames.values())
        assert len(frames) == N
        assert all(len(fr["out_instances"].detections) == 1 for fr in frames)
        masks = [fr["out"].get_mask() for fr in frames]
        reference = reference or masks
        assert all(np.array_equal(a, b) for a, b in zip(masks, reference))


def test_split_for_shards_is_disjoint_complete_and_balanced():
    ids = [f"v{i}" for i in range(7)]
    counts = [100, 10, 10, 10, 10, 10, None]
    parts = split_for_shards(ids, counts, 2)
    assert sorted(sum(parts, [])) == sorted(ids) and not set(parts[0]) & set(parts[1])
    assert parts[0] == ["v0"]  # the long video alone against the six short ones (None counts as their mean)
    assert split_for_shards(ids[:2], [5, 5], 4) == [["v0"], ["v1"]]  # never an empty shard
    with pytest.raises(ValueError, match="at least 1"):
        split_for_shards(ids, counts, 0)


def test_shards_queue_disjoint_operations_that_complete(clip):
    ds = _dataset("shards-queue", clip)
    try:
        result = foo.execute_operator(URI, ctx={"dataset": ds, "params": dict(PARAMS, shards=2)})
        assert result.error is None, result.error
        assert result.result["queued"] == 2 and result.result["videos_per_shard"] == [2, 2]
        ops = _queued(ds)
        assert len(ops) == 2
        parts = [op.context.request_params["params"]["shard"]["sample_ids"] for op in ops]
        assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(ds.values("id"))
        assert all(op.context.request_params["params"]["shards"] == 1 for op in ops)  # a shard never re-shards
        DelegatedOperationService().execute_queued_operations(dataset_name=ds.name)
        _assert_complete(ds)
        config = run_config(ds, "out")
        assert config["status"] == "done" and config["shards"]["count"] == 2
        assert [s["state"] for s in config["shard_states"]] == ["done", "done"]
        assert sum(s["processed"] for s in config["shard_states"]) == 4  # each video once
    finally:
        ds.delete()


def _launch_worker(log: Path) -> subprocess.Popen:
    cli = Path(sys.executable).parent / "fiftyone"
    return subprocess.Popen([str(cli), "delegated", "launch"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=os.environ.copy(), start_new_session=True)


def _wait_ready(workers, logs, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for w, log in zip(workers, logs):
            assert w.poll() is None, log.read_text()[-2000:]
        if all("Delegated operation service running" in log.read_text() for log in logs):
            return
        time.sleep(0.5)
    raise AssertionError("workers did not start: " + " | ".join(log.read_text()[-500:] for log in logs))


def _stop(workers):
    for w in workers:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
        w.wait()


@pytest.mark.slow
def test_two_delegated_launch_workers_run_the_shards_at_once(clip, tmp_path):
    ds = _dataset("shards-workers", clip)
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    workers = [_launch_worker(log) for log in logs]
    try:
        _wait_ready(workers, logs)
        result = foo.execute_operator(URI, ctx={"dataset": ds, "params": dict(PARAMS, shards=2)})
        assert result.result["queued"] == 2
        deadline = time.time() + 300
        while time.time() < deadline:
            states = shard_states(ds, "out", result.result["shard_run"])
            if len(states) == 2 and all(s["state"] == "done" for s in states):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"shards did not finish: {states}\n" + "\n".join(log.read_text()[-1500:]
                                                                               for log in logs))
        _assert_complete(ds)
        a, b = states
        assert a["pid"] != b["pid"]  # two workers, one shard each
        assert a["started"] < b["finished"] and b["started"] < a["finished"]  # at the same time
        assert a["processed"] + b["processed"] == 4
    finally:
        _stop(workers)
        ds.delete()


@pytest.mark.slow
def test_a_killed_workers_shard_requeued_completes(clip, tmp_path):
    ds = _dataset("shards-killed", clip)
    log = tmp_path / "worker.log"
    try:
        result = foo.execute_operator(URI, ctx={"dataset": ds, "params": dict(PARAMS, shards=2)})
        assert result.result["queued"] == 2
        worker = _launch_worker(log)
        deadline = time.time() + 240
        while time.time() < deadline:  # kill it once its shard has finished one video of two
            ds.reload()
            if len(ds.match(fo.ViewField("out_frtm") != None)) >= 1:  # noqa: E711
                break
            assert worker.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        _stop([worker])
        ds.reload()
        assert 1 <= len(ds.match(fo.ViewField("out_frtm") != None)) < 4  # noqa: E711
        service = DelegatedOperationService()
        running = service.list_operations(dataset_name=ds.name, run_state=ExecutionRunState.RUNNING)
        assert len(running) == 1  # the killed worker's shard, stuck as running
        service.rerun_operation(running[0].id)  # re-queued, as a user does from the runs list
        service.execute_queued_operations(dataset_name=ds.name)
        _assert_complete(ds)
        states = run_config(ds, "out")["shard_states"]
        assert [s["state"] for s in states] == ["done", "done"]
    finally:
        ds.delete()
