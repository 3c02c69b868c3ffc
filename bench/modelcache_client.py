#!/usr/bin/env python3
"""A grpcio client that installs a model the way ModelExpress's Python ModelCacheClient does
at its defaults (written from that description, for comparison in bench/fetch.sh):
EnsureModelDownloaded, then ONE StreamModelFiles call for every file with 1 MiB chunks,
each file written from Python into a temp dir and renamed into place; no hashing, no fsync.

usage: modelcache_client.py ADDRESS MODEL DEST     prints one JSON line (bytes, files, seconds)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
import grpc  # noqa: E402

from server_harness import stubs  # noqa: E402


def main() -> int:
    address, model, dest = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    s = stubs()
    pb, rpc = s["model_pb2"], s["model_pb2_grpc"]
    t0 = time.monotonic()
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = rpc.ModelServiceStub(channel)
    last = None
    for last in stub.EnsureModelDownloaded(pb.ModelDownloadRequest(model_name=model)):
        pass
    if last is None or last.status != pb.DOWNLOADED:
        print(f"ensure failed: {last}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix=".mc-", dir=dest.parent))
    total, files, out, current = 0, 0, None, None
    for chunk in stub.StreamModelFiles(pb.ModelFilesRequest(model_name=model, chunk_size=1 << 20)):
        if chunk.relative_path != current:
            if out:
                out.close()
            current = chunk.relative_path
            path = tmp / current
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "wb")
            files += 1
        out.write(chunk.data)
        total += len(chunk.data)
    if out:
        out.close()
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    print(json.dumps({"bytes": total, "files": files, "seconds": time.monotonic() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
