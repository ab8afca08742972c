"""Data benchmarks (issue 4), each a ratio against a baseline measured in the same run.

1. A 1 GiB input through the cache and SFTP to a pool host (a real sshd on
   loopback): the cached entry is revalidated over HTTP (304), put into the
   host's own input cache with the daemon's SshTransport and hard-linked into
   the workspace there, against `scp` of the same file to the same sshd
   (target: at least 0.7x the throughput).
2. Outputs to S3 (moto in server mode on loopback): the daemon's S3OutputStore
   collecting a folder of outputs, against a bare aioboto3 upload_file of the
   same files to the same server (target: at least 0.7x).

Run: .venv/bin/python bench/bench_data.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aioboto3
import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon.hosts import _CIPHERS  # noqa: E402
from runyard.daemon.inputs import InputFetcher, place  # noqa: E402
from runyard.daemon.outputs import LocalOutputStore, S3OutputStore  # noqa: E402
from runyard.daemon.transport import SshTransport  # noqa: E402
from tests.pool import start_lone_host  # noqa: E402
from tests.s3server import start_moto  # noqa: E402


def random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=out, check=True)


async def bench_input(tmp: Path, size: int) -> dict[str, float]:
    www = tmp / "www"
    www.mkdir()
    random_file(www / "big.bin", size)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/big.bin"
    host, key, known = start_lone_host(tmp)
    try:
        t0 = time.perf_counter()
        subprocess.run(["scp", "-q", "-o", f"UserKnownHostsFile={known}", "-i", str(key), "-P", str(host.port),
                        str(www / "big.bin"), f"root@127.0.0.1:{tmp}/scp.bin"], check=True)
        scp = time.perf_counter() - t0
        fetcher = InputFetcher(tmp / "cache", LocalOutputStore(tmp / "outputs"))
        await fetcher.fetch(url, 0)  # fill the cache: the measured run finds it there, as a repeat run does
        conn = await asyncssh.connect("127.0.0.1", port=host.port, username="root", client_keys=[str(key)],
                                      known_hosts=str(known), encryption_algs=list(_CIPHERS))
        transport = SshTransport(conn, "gpu-01")
        t0 = time.perf_counter()
        files = await fetcher.fetch(url, 0)
        staging = tmp / "staging"
        _, wanted = place({"data": files}, staging, "/valohai", copy=False)  # what the runner does for a pool host
        await transport.put_tree(staging, f"{tmp}/remote")
        await transport.put_cached([(f.source, f.sha256, f.size, rel) for f, rel in wanted], f"{tmp}/host-cache",
                                   f"{tmp}/remote")
        ours = time.perf_counter() - t0
        assert fetcher.fetches == 1 and (tmp / "remote" / "inputs" / "data" / "big.bin").stat().st_size == size
        conn.close()
    finally:
        host.kill()
        server.shutdown()
    return {"bytes": size, "scp_mb_per_s": size / scp / 1e6, "runyard_mb_per_s": size / ours / 1e6,
            "ratio": scp / ours}


async def bench_outputs(tmp: Path, size: int) -> dict[str, float]:
    moto, endpoint = start_moto()
    import os

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    options = {"endpoint_url": endpoint}
    outputs = tmp / "outputs"
    outputs.mkdir()
    for i in range(4):  # a checkpoint-like mix: some big files, in parts
        random_file(outputs / f"ckpt-{i}.pt", size // 4)
    try:
        session = aioboto3.Session()
        async with session.client("s3", **options) as s3:
            await s3.create_bucket(Bucket="bench")
            t0 = time.perf_counter()
            for path in sorted(outputs.iterdir()):
                await s3.upload_file(str(path), "bench", f"bare/{path.name}")
            bare = time.perf_counter() - t0
        store = S3OutputStore("bench", "runyard/", options)
        t0 = time.perf_counter()
        collected = await store.collect(1, outputs)
        ours = time.perf_counter() - t0
        assert len(collected.files) == 4
    finally:
        moto.kill()
        moto.wait()
    return {"bytes": size, "bare_mb_per_s": size / bare / 1e6, "runyard_mb_per_s": size / ours / 1e6,
            "ratio": bare / ours}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    args = parser.parse_args()
    size = (256 if args.quick else 1024) << 20
    tmp = Path(tempfile.mkdtemp(prefix="ryb-data-", dir="/tmp"))
    try:
        (tmp / "in").mkdir()
        (tmp / "out").mkdir()
        results = {"input_to_host": await bench_input(tmp / "in", size),
                   "outputs_to_s3": await bench_outputs(tmp / "out", size)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save("data", results)
    i, o = results["input_to_host"], results["outputs_to_s3"]
    print(f"\ninput through cache + SFTP {i['runyard_mb_per_s']:.0f} MB/s vs scp {i['scp_mb_per_s']:.0f} MB/s: "
          f"{i['ratio']:.2f}x (target >= 0.7x)")
    print(f"outputs to S3 {o['runyard_mb_per_s']:.0f} MB/s vs bare aioboto3 {o['bare_mb_per_s']:.0f} MB/s: "
          f"{o['ratio']:.2f}x (target >= 0.7x)")


if __name__ == "__main__":
    asyncio.run(main())
