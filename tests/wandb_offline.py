"""Read what an offline W&B run wrote (its ``run-*.wandb`` record log), for assertions in tests."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

_BLOCK = 32768


def _records(data: bytes):
    ident = data[:4]
    assert ident == b":W&B", f"not a W&B run file (header {ident!r})"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def read_offline_runs(wandb_dir: str | Path) -> list[dict]:
    """Every offline run under ``wandb_dir``: its run record, config, history rows and summary.

    ``summary`` is the run summary as the record log leaves it (later updates win); nested keys
    are joined with "/" as in the history rows. ``exited`` says whether the run's exit record
    (written by ``run.finish()``) is there yet.
    """
    from wandb.proto import wandb_internal_pb2

    runs = []
    for f in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb")):
        out = {"file": f, "run": None, "config": {}, "history": [], "summary": {},
               "exited": False}
        for raw in _records(f.read_bytes()):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(raw)
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                r = rec.run
                out["run"] = {"id": r.run_id, "group": r.run_group, "job_type": r.job_type,
                              "name": r.display_name, "project": r.project}
                out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "config":
                out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "history":
                out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                       for i in rec.history.item})
            elif kind == "summary":
                out["summary"].update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                       for i in rec.summary.update})
                for i in rec.summary.remove:
                    out["summary"].pop(i.key or "/".join(i.nested_key), None)
            elif kind == "exit":
                out["exited"] = True
        runs.append(out)
    return runs


def wait_for_offline_runs(wandb_dir: str | Path, count: int = 1, timeout: float = 60.0) -> list[dict]:
    """``read_offline_runs`` once ``count`` runs have their exit record (or when ``timeout`` s pass).

    ``run.finish()`` can return before W&B's service has flushed the run file, so a read right
    after it may see only the file header; this polls until the file is complete.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            runs = read_offline_runs(wandb_dir)
            if len(runs) >= count and all(r["exited"] for r in runs):
                return runs
        except Exception:  # a half-written record: try again
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return read_offline_runs(wandb_dir)
        time.sleep(0.1)
