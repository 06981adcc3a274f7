"""The server under load: aggregate tokens/s of 32 concurrent clients against one client, latency percentiles,
and the server's resident memory over a long run of repeated requests.

    python benchmarks/serve.py MODEL [--clients 32] [--minutes 10] [--write-readme]

MODEL is anything `pocketgpt serve` takes: a checkpoint folder, a GGUF file (SmolLM2's, for instance) or a
Hugging Face folder.

Starts `pocketgpt serve` as a child process, so its memory is measured apart from the clients'. Each client
sends streamed completions (a 16-token prompt from tinyshakespeare's validation text, 64 new tokens,
temperature 0.8) one after another, and times the first token (the first chunk with text) and the whole
reply; the one-client and the many-client phases run back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, report  # noqa: E402

from pocketgpt.interop import load as load_model  # noqa: E402
from pocketgpt.model import SlotCache  # noqa: E402
from pocketgpt.train import load_dataset  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, name: str, prompts: list[str], clients: int, seconds: float, tokens: int):
    """Clients sending requests back to back for `seconds`: (completion tokens, latencies, times to the first
    token, wall seconds). All clients share one thread (asyncio), so that they take as little of the machine as
    they can."""
    done_tokens, latencies, firsts = [0], [], []

    async def client(http: httpx.AsyncClient, i: int, stop_at: float) -> None:
        n = i
        while time.perf_counter() < stop_at:
            t, first = time.perf_counter(), None
            body = {"model": name, "prompt": prompts[n % len(prompts)], "max_tokens": tokens, "temperature": 0.8,
                    "seed": n, "stream": True}
            async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if first is None and event["choices"][0]["text"]:
                        first = time.perf_counter() - t
                    if "usage" in event:
                        done_tokens[0] += event["usage"]["completion_tokens"]
            latencies.append(time.perf_counter() - t)
            firsts.append(first if first is not None else latencies[-1])
            n += clients

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients + 1)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            stop_at = time.perf_counter() + seconds
            await asyncio.gather(*(client(http, i, stop_at) for i in range(clients)))

    start = time.perf_counter()
    asyncio.run(run())
    return done_tokens[0], latencies, firsts, time.perf_counter() - start


def engine_ratio(model, clients: int, steps: int = 30) -> float:
    """tokens/s of one decode step over `clients` slots against one slot, in this process (no HTTP)."""
    rates = {}
    for batch in (1, clients):
        cache = SlotCache(model.config, batch, model.dtype, min(512, model.config.block_size))
        cache.lengths[:] = 16
        tokens, slots = np.ones(batch, dtype=np.int64), np.arange(batch)
        model.decode_slots(tokens, slots, cache)
        start = time.perf_counter()
        for _ in range(steps):
            cache.lengths[:] = 16
            model.decode_slots(tokens, slots, cache)
        rates[batch] = batch * steps / (time.perf_counter() - start)
    return rates[clients] / rates[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60, help="length of each throughput phase")
    ap.add_argument("--minutes", type=float, default=10, help="length of the memory run")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    load_avg = loadavg()
    ckpt = load_model(args.checkpoint)
    in_process = engine_ratio(ckpt.model(), args.clients)
    ds = load_dataset(ckpt.data.get("data", "shakespeare"), ckpt.data.get("mode"), ckpt.tokenizer)
    prompts = [ckpt.tokenizer.decode(ds.val[i:i + 16]) for i in range(0, 64 * 997, 997)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = "bench"
    server = subprocess.Popen([sys.executable, "-m", "pocketgpt", "serve", args.checkpoint, "--port", str(port),
                               "--name", name, "--slots", str(args.clients)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/health").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        load(url, name, prompts, 2, 5, args.tokens)  # warm-up
        one = load(url, name, prompts, 1, args.seconds, args.tokens)
        many = load(url, name, prompts, args.clients, args.seconds, args.tokens)
        memory, start = [], time.perf_counter()
        while time.perf_counter() - start < args.minutes * 60:
            load(url, name, prompts, args.clients, min(30, args.minutes * 60), args.tokens)
            memory.append((time.perf_counter() - start, rss_mb(server.pid)))
            print(f"{memory[-1][0]:.0f} s: server RSS {memory[-1][1]:.1f} MB", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def row(label, result):
        tokens, lat, firsts, wall = result
        q, f = statistics.quantiles(lat, n=20), statistics.quantiles(firsts, n=20)
        return tokens / wall, f"| {label} | {len(lat)} | {tokens / wall:,.0f} | {statistics.median(lat):.2f} s | " \
                              f"{q[18]:.2f} s | {statistics.median(firsts):.2f} s | {f[18]:.2f} s |"

    one_rate, one_row = row("1 client", one)
    many_rate, many_row = row(f"{args.clients} concurrent clients", many)
    rss = [m for _, m in memory]
    rows = [f"Model: {Path(args.checkpoint).name}, {ckpt.config.n_layer} layers, {ckpt.config.n_embd} channels; "
            f"{args.tokens} new tokens per request, {args.seconds:.0f} s per phase, {args.clients} slots; load average "
            f"at the start {load_avg}.", "",
            "| load | requests | completion tokens/s | latency p50 | latency p95 | first token p50 | first token p95 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            one_row, many_row, "",
            f"Aggregate throughput with {args.clients} clients: **{many_rate / one_rate:.1f}x** one client's "
            f"(the batched decode step alone, in process: {in_process:.1f}x). "
            f"Server memory over a {args.minutes:g}-minute run of repeated requests: {rss[0]:.1f} MB after the "
            f"first {memory[0][0]:.0f} s, {rss[-1]:.1f} MB at the end (max {max(rss):.1f} MB, "
            f"{len(rss)} readings)."]
    report("serve", rows, args.write_readme)


if __name__ == "__main__":
    main()
