"""What a propagation run may write, and who may write it: the guards that keep a user's labels safe.

- :func:`check_not_prompt_or_ground_truth`: the output fields never equal or derive into the prompt field or an
  evaluation's ground truth; :func:`check_not_foreign`: they never replace labels this plugin did not write
  (unless forced).
- :class:`FieldLock`: a run claims its output field in the database (owner, start time, heartbeat), so two runs
  never write one field at once; a claim whose owner died is taken over. The shards of one sharded run (disjoint
  videos, several workers) claim the field together, each its own part.
- :func:`done_key` / :func:`redo_reason`: a video counts as done only for the configuration **and** the prompts it
  was propagated with.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from .labels import frame_field_name, frame_field_type

log = logging.getLogger(__name__)

LOCK_COLLECTION = "frtm_field_locks"
SHARD_COLLECTION = "frtm_shards"


def run_key(label_field: str) -> str:
    """The FiftyOne run under which a propagation into ``label_field`` is recorded."""
    return "frtm_" + "".join(c if c.isalnum() else "_" for c in frame_field_name(label_field))


def output_fields(label_field: str) -> dict[str, str]:
    """The frame-level fields one propagation writes, and the sample-level completion marker."""
    base = frame_field_name(label_field)
    return {"segmentation": base, "instances": f"{base}_instances", "heatmap": f"{base}_scores",
            "marker": f"{base}_frtm", "keyframes": f"{base}_frtm_keyframes"}


# -- which fields may be written --------------------------------------------------------------------------------------

def protected_fields(dataset) -> dict[str, str]:
    """Frame fields that hold ground truth of an evaluation -> a description of that evaluation."""
    out = {}
    for key in dataset.list_evaluations():
        try:
            cfg = dataset.get_evaluation_info(key).config
        except Exception:  # an evaluation FiftyOne cannot describe (e.g. its metric's plugin is missing)
            continue
        gt = getattr(cfg, "gt_field", None)
        if gt:
            out[frame_field_name(gt)] = f"the ground truth of evaluation '{key}'"
    for key, summary in (dataset.info.get("frtm_evaluations") or {}).items():
        if isinstance(summary, dict) and summary.get("gt_field"):
            out.setdefault(frame_field_name(summary["gt_field"]), f"the ground truth of evaluation '{key}'")
    return out


def has_labels(dataset, field: str, frame_level: bool = True) -> bool:
    path = f"frames.{field}" if frame_level else field
    return dataset.count(path) > 0


def _frame_outputs(label_field: str, store_instances: bool, store_heatmaps: bool) -> dict[str, str]:
    """The frame fields a run writes: kind -> name."""
    out = output_fields(label_field)
    kinds = ("segmentation",) + (("instances",) if store_instances else ()) + (("heatmap",) if store_heatmaps else ())
    return {k: out[k] for k in kinds}


def check_not_prompt_or_ground_truth(dataset, prompt_field: str, label_field: str, store_instances: bool = True,
                                     store_heatmaps: bool = True) -> None:
    """Refuse, before anything is written, a run whose outputs would overwrite the prompts or an evaluation's
    ground truth (whatever ``force`` says)."""
    prompt_field = frame_field_name(prompt_field)
    out = output_fields(label_field)
    frame_outputs = _frame_outputs(label_field, store_instances, store_heatmaps)
    for kind, name in frame_outputs.items():
        if name == prompt_field:
            how = "is" if kind == "segmentation" else f"derives ('{out['segmentation']}' + '_{name.rsplit('_', 1)[1]}')"
            raise ValueError(f"the output field 'frames.{name}' {how} the prompt field 'frames.{prompt_field}': "
                             "propagating would overwrite the prompts; choose another label_field")
    guarded = protected_fields(dataset)
    for name in frame_outputs.values():
        if name in guarded:
            raise ValueError(f"the output field 'frames.{name}' holds {guarded[name]}: propagating would "
                             "overwrite it; choose another label_field (or delete that evaluation first)")


def check_not_foreign(dataset, label_field: str, force: bool = False, store_instances: bool = True,
                      store_heatmaps: bool = True) -> None:
    """Refuse to replace labels in the output fields that no FRTM run wrote, unless ``force``."""
    out = output_fields(label_field)
    frame_outputs = _frame_outputs(label_field, store_instances, store_heatmaps)
    if force or run_key(label_field) in dataset.list_runs():
        return  # our own outputs (or the user said so): overwrite/resume rules apply
    foreign = [f"frames.{name}" for name in frame_outputs.values()
               if frame_field_type(dataset, name) is not None and has_labels(dataset, name)]
    if out["marker"] in dataset.get_field_schema() and has_labels(dataset, out["marker"], frame_level=False):
        foreign.append(out["marker"])
    if foreign:
        raise ValueError(f"{', '.join(repr(f) for f in foreign)} already hold(s) labels that FRTM did not write "
                         f"(no FRTM run is recorded for '{frame_field_name(label_field)}'); choose another "
                         "label_field, or pass force=True to replace them")


# -- done markers --------------------------------------------------------------------------------------------------

PROMPTS_CHANGED = "its prompts changed since it was propagated"


def done_key(config_hash: str, prompt_digest: str) -> str:
    return f"{config_hash}:{prompt_digest}"


def redo_reason(marker: str | None, config_hash: str, prompt_digest: str, overwrite: bool) -> str | None:
    """None when the video is done for this configuration and these prompts; else why it must be (re)computed."""
    if overwrite:
        return "overwrite requested"
    if not marker:
        return "not propagated yet (or an earlier run stopped before finishing it)"
    cfg, _, digest = marker.partition(":")
    if not digest:
        return "propagated by an earlier version of the plugin"
    if cfg != config_hash:
        return "the model configuration changed since it was propagated"
    if digest != prompt_digest:
        return PROMPTS_CHANGED
    return None


# -- the field lock ----------------------------------------------------------------------------------------------------

class FieldLockedError(RuntimeError):
    """Another live run holds the output field."""


class FieldLockLostError(RuntimeError):
    """This run's claim on its field was taken over (its heartbeat stopped for longer than the expiry)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FieldLock:
    """A claim on one dataset's output field, kept in the database so that runs on other machines see it.

    The claim holds its owner (host, pid), start time, configuration and a heartbeat that a background thread
    renews every ``heartbeat_s`` seconds, stamped with the database server's clock (machines' clocks may differ).
    Another run finding the claim waits up to ``wait_s`` seconds for it, then refuses. A claim is stale, and taken
    over, when its heartbeat is older than ``expire_s`` or when its owner was a process on this host that no longer
    exists (a killed worker).

    ``group`` / ``member``: the shards of one sharded run (``group`` = its id, ``member`` = the shard's index) hold
    the field together: each claims its own part, they exclude every other run and each other's part only."""

    def __init__(self, dataset, field: str, description: str = "", heartbeat_s: float = 10.0,
                 expire_s: float = 60.0, group: str | None = None, member: int | None = None):
        from fiftyone.core.odm import get_db_conn

        self._db = get_db_conn()
        self._coll = self._db[LOCK_COLLECTION]
        self.field = frame_field_name(field)
        self.dataset_name = dataset.name
        self._key = f"{dataset._doc.id}:{self.field}"
        self.group = group
        self._id = self._key if group is None else f"{self._key}#{group}/{member}"
        self.owner = uuid.uuid4().hex
        self.description = description
        self.heartbeat_s, self.expire_s = heartbeat_s, expire_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False
        self.took_over: dict | None = None  # the stale claim this one replaced, if any

    # -- public
    def acquire(self, wait_s: float = 0.0) -> "FieldLock":
        from pymongo.errors import DuplicateKeyError

        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            doc = {"_id": self._id, "key": self._key, "group": self.group, "owner": self.owner,
                   "dataset": self.dataset_name, "field": self.field, "host": socket.gethostname(),
                   "pid": os.getpid(), "description": self.description, "started": datetime.now(timezone.utc)}
            try:
                self._coll.insert_one(doc)
                self._coll.update_one({"_id": self._id}, {"$currentDate": {"heartbeat": True}})
                held = self._conflict()
                if held is None:
                    break
                # another run holds the field under another claim: step back, then take it over or wait
                self._coll.delete_one({"_id": self._id, "owner": self.owner})
            except DuplicateKeyError:
                held = self._coll.find_one({"_id": self._id})
                if held is None:
                    continue  # released between the two calls
            if held is not None:
                stale = self._stale_because(held)
                if stale:
                    # compare-and-delete: only the claim seen stale, never one renewed or replaced meanwhile
                    if self._coll.delete_one({"_id": held["_id"], "owner": held["owner"],
                                              "heartbeat": held.get("heartbeat")}).deleted_count:
                        log.warning("taking over the claim on 'frames.%s' of %s (pid %s): %s", self.field,
                                    held.get("host"), held.get("pid"), stale)
                        self.took_over = dict(held, reason=stale)
                    continue
                if time.monotonic() >= deadline:
                    raise FieldLockedError(self._busy_message(held)) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._beat, name=f"frtm-lock-{self.field}", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise when this run lost its claim (another run took the field over): stop writing."""
        if self.lost:
            raise FieldLockLostError(f"this run's claim on 'frames.{self.field}' was taken over by another run "
                                     "(its heartbeat had stopped); stopping without writing more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._coll.delete_one({"_id": self._id, "owner": self.owner})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    @staticmethod
    def holder(dataset, field: str) -> dict | None:
        """The current claim on a field (None when free): owner host, pid, description, start and heartbeat."""
        from fiftyone.core.odm import get_db_conn

        key = f"{dataset._doc.id}:{frame_field_name(field)}"
        return get_db_conn()[LOCK_COLLECTION].find_one({"$or": [{"_id": key}, {"key": key}]})

    # -- internals
    def _conflict(self) -> dict | None:
        """Another claim on this field that this one may not share (any, unless both are shards of one run)."""
        others = {"$or": [{"_id": self._key}, {"key": self._key}], "_id": {"$ne": self._id}}
        if self.group is not None:
            others["group"] = {"$ne": self.group}
        return self._coll.find_one(others)

    def _server_now(self) -> datetime:
        return self._db.command("hello")["localTime"]

    def _stale_because(self, held: dict) -> str | None:
        beat = held.get("heartbeat") or held.get("started")
        if beat is not None:
            age = (self._server_now().replace(tzinfo=None) - beat.replace(tzinfo=None)).total_seconds()
            if age > self.expire_s:
                return f"no heartbeat for {age:.0f} s (expiry {self.expire_s:.0f} s)"
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) \
                and held["pid"] != os.getpid() and not _pid_alive(held["pid"]):
            return f"its process {held['pid']} on this host has exited"
        return None

    def _busy_message(self, held: dict) -> str:
        started = held.get("started")
        since = started.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(started, datetime) else "?"
        return (f"another FRTM run is writing 'frames.{self.field}' of dataset '{self.dataset_name}' "
                f"({held.get('description') or 'unknown model'}; host {held.get('host')}, pid {held.get('pid')}, "
                f"since {since}); wait for it to finish, choose another label_field, or wait for the field with "
                f"lock_wait=<seconds>. A claim whose run died is taken over once its heartbeat is "
                f"{self.expire_s:.0f} s old")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                res = self._coll.update_one({"_id": self._id, "owner": self.owner},
                                            {"$currentDate": {"heartbeat": True}})
            except Exception as e:  # a database hiccup: try again at the next beat
                log.warning("could not renew the claim on 'frames.%s': %s", self.field, e)
                continue
            if res.matched_count == 0:
                self.lost = True
                return


# -- the shards of a sharded run ------------------------------------------------------------------------------------

def split_for_shards(ids: list[str], frame_counts: list[int | None], shards: int) -> list[list[str]]:
    """Disjoint parts of ``ids`` for ``shards`` workers, balanced by frames (longest video first to the least
    loaded part; an unknown count weighs as the mean). Empty parts are dropped; each part keeps the view's order."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    known = [c for c in frame_counts if c]
    mean = sum(known) / len(known) if known else 1
    weight = {i: (c or mean) for i, c in zip(ids, frame_counts)}
    order = {i: k for k, i in enumerate(ids)}
    parts: list[list[str]] = [[] for _ in range(min(shards, len(ids)))]
    load = [0.0] * len(parts)
    for i in sorted(ids, key=lambda i: -weight[i]):
        k = min(range(len(parts)), key=lambda j: (load[j], j))
        parts[k].append(i)
        load[k] += weight[i]
    return [sorted(p, key=order.get) for p in parts if p]


def record_shard(dataset, field: str, shard: dict, state: str, report=None) -> None:
    """One shard's state (queued, running, done, interrupted, taken over), its worker and its counts, in the
    database: each shard writes only its own document, so shards running at once never overwrite each other."""
    from fiftyone.core.odm import get_db_conn

    doc = {"dataset": dataset.name, "field": frame_field_name(field), "run": shard["run"], "index": shard["index"],
           "count": shard["count"], "videos": len(shard.get("sample_ids") or []), "state": state,
           "host": socket.gethostname(), "pid": os.getpid()}
    if report is not None:
        doc.update(processed=len(report.processed), skipped=len(report.skipped), failed=len(report.failed),
                   frames=report.frames)
    _id = f"{dataset._doc.id}:{frame_field_name(field)}#{shard['run']}/{shard['index']}"
    stamps = {"updated": True}  # the database server's clock (workers' clocks may differ)
    if state == "running":
        stamps["started"] = True
    elif state != "queued":
        stamps["finished"] = True
    get_db_conn()[SHARD_COLLECTION].update_one({"_id": _id}, {"$set": doc, "$currentDate": stamps}, upsert=True)


def shard_states(dataset, field: str, run: str) -> list[dict]:
    """Every shard of the sharded run ``run`` into ``field``, by index."""
    from fiftyone.core.odm import get_db_conn

    prefix = f"{dataset._doc.id}:{frame_field_name(field)}#{run}/"
    docs = get_db_conn()[SHARD_COLLECTION].find({"_id": {"$regex": "^" + re.escape(prefix)}})
    return sorted(({k: v for k, v in d.items() if k != "_id"} for d in docs), key=lambda d: d["index"])
