"""Read what an offline W&B run wrote (its ``run-*.wandb`` record log), for assertions in tests."""

from __future__ import annotations

import json
import struct
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
    """Every offline run under ``wandb_dir``: its run record, config and history rows."""
    from wandb.proto import wandb_internal_pb2

    runs = []
    for f in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb")):
        out = {"file": f, "run": None, "config": {}, "history": []}
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
        runs.append(out)
    return runs
