"""Throughput of `minigpt serve` under 1, 8 and 32 concurrent streaming clients, beside
`sample.py`'s own loop (`minigpt.completion.complete`) on the same checkpoint.

    python benchmarks/serve_throughput.py out/shakespeare
    python benchmarks/serve_throughput.py out/shakespeare --clients 1 8 --requests 16   # a quick look
    python benchmarks/serve_throughput.py CKPT --json results.json

The server is `python -m minigpt.cli serve --port 0` (a free port on 127.0.0.1, never
another address), started once and stopped with Ctrl-C (SIGINT) at the end. For each
concurrency level, `--requests` streaming requests of `--max-tokens` tokens each (one
prompt, temperature 1, top-k 50, a different seed each) are shared among that many
clients, each sending its next request when the last one ended. Reported per level:

    tokens/s    every completion token of the level / the level's wall time
    TTFT        time to first token (request sent -> first token's event), p50 and p95
    per-token   time between a request's consecutive tokens, p50 and p95
    errors      requests that failed (HTTP errors, 503s included, or broken streams)

and then `complete()` in this process, one request at a time (what `python sample.py`
does per run, without the start-up), on the same prompt and settings. The goal the
server must be able to show: 8 clients >= 1.5x the aggregate tokens/s of 1 client.

Bounded: at most --requests per level and --time-limit seconds in all (the run stops
with an error past it). Needs the serve extra and httpx (pip install -e '.[dev]').
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "ROMEO:"
SETTINGS = {"temperature": 1.0, "top_k": 50}


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def start_server(checkpoint: str, device: str, max_tokens: int, max_batch: int, deadline: float):
    """`minigpt serve` on 127.0.0.1, port 0; returns (process, base URL) once it answers."""
    import httpx

    cmd = [
        sys.executable,
        "-m",
        "minigpt.cli",
        "serve",
        "--checkpoint",
        checkpoint,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--device",
        device,
        "--max-tokens-cap",
        str(max(max_tokens, 16)),
        "--max-batch",
        str(max_batch),
        "--queue-size",
        "256",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    line = proc.stdout.readline()  # "minigpt serve: NAME (KIND, DEVICE) on http://127.0.0.1:PORT/ ..."
    if "http://" not in line:
        proc.wait(timeout=30)
        raise SystemExit(f"the server did not start (exit {proc.returncode}); see its error above")
    url = line.split(" on ", 1)[1].split("/ ", 1)[0]
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    stop_server(proc)
    raise SystemExit("the server did not answer /health in time")


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def one_request(client, url: str, model: str, max_tokens: int, seed: int) -> dict:
    """Stream one completion; times of the request, and of each token's event."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "seed": seed, "stream": True, **SETTINGS}
    t0 = time.perf_counter()
    times = []
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            times.append(time.perf_counter())  # one event per token drawn
    if not times:
        raise RuntimeError("no tokens")
    return {"ttft": times[0] - t0, "gaps": [b - a for a, b in zip(times, times[1:])], "tokens": len(times)}


async def level(url: str, model: str, clients: int, requests: int, max_tokens: int, deadline: float) -> dict:
    """`requests` requests shared by `clients` concurrent clients."""
    import httpx

    todo = iter(range(requests))
    results, errors = [], []

    async def client_loop(client):
        for i in todo:
            if time.monotonic() > deadline:
                raise SystemExit("past --time-limit; stopping")
            try:
                results.append(await one_request(client, url, model, max_tokens, seed=1000 + i))
            except (RuntimeError, httpx.HTTPError) as e:
                errors.append(str(e))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(1000 * percentile([r["ttft"] for r in results], 50), 1),
        "ttft_p95_ms": round(1000 * percentile([r["ttft"] for r in results], 95), 1),
        "token_p50_ms": round(1000 * percentile(gaps, 50), 2),
        "token_p95_ms": round(1000 * percentile(gaps, 95), 2),
    }


def sample_py(checkpoint: str, device: str, requests: int, max_tokens: int, deadline: float) -> dict:
    """`complete()` (sample.py's loop) one request at a time, in this process."""
    from minigpt.completion import complete
    from minigpt.inference import load_for_inference
    from minigpt.sampling import SamplingParams

    ckpt, _ = load_for_inference(checkpoint, device)
    params = SamplingParams(**SETTINGS)
    complete(ckpt.model, ckpt.tokenizer, PROMPT, max_new_tokens=8, params=params, seed=0)  # warm-up
    tokens, latencies = 0, []
    t0 = time.perf_counter()
    for i in range(requests):
        if time.monotonic() > deadline:
            raise SystemExit("past --time-limit; stopping")
        t = time.perf_counter()
        [c] = complete(ckpt.model, ckpt.tokenizer, PROMPT, max_new_tokens=max_tokens, params=params, seed=1000 + i)
        latencies.append(time.perf_counter() - t)
        tokens += len(c.ids)
    wall = time.perf_counter() - t0
    return {
        "requests": requests,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "request_p50_ms": round(1000 * percentile(latencies, 50), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="run or checkpoint directory")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels (default: 1 8 32)")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (default: 64)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default: 64)")
    ap.add_argument(
        "--sample-requests", type=int, default=8, help="requests for the complete() comparison (default: 8)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole run (default: 1800)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    if min(args.clients) < 1 or args.requests < 1 or args.max_tokens < 1:
        ap.error("--clients, --requests and --max-tokens must be >= 1")
    deadline = time.monotonic() + args.time_limit

    import httpx

    proc, url = start_server(args.checkpoint, args.device, args.max_tokens, max(32, max(args.clients)), deadline)
    try:
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        asyncio.run(level(url, model, 1, 2, 8, deadline))  # warm-up: first-call costs are not timed
        levels = []
        for c in args.clients:
            r = asyncio.run(level(url, model, c, args.requests, args.max_tokens, deadline))
            levels.append(r)
            print(
                f"{c:>3} clients: {r['tokens_per_s']:>8.1f} tokens/s | TTFT p50 {r['ttft_p50_ms']:.1f} ms "
                f"p95 {r['ttft_p95_ms']:.1f} ms | per token p50 {r['token_p50_ms']:.2f} ms "
                f"p95 {r['token_p95_ms']:.2f} ms"
                f" | {r['requests']} requests, {r['tokens']} tokens, {r['errors']} errors",
                flush=True,
            )
        engine = httpx.get(url + "/health", timeout=30).json()["engine"]
    finally:
        stop_server(proc)

    sample = sample_py(args.checkpoint, args.device, args.sample_requests, args.max_tokens, deadline)
    print(
        f"complete() (sample.py), one request at a time: {sample['tokens_per_s']:.1f} tokens/s "
        f"({sample['requests']} requests, p50 {sample['request_p50_ms']:.1f} ms each)"
    )
    by = {r["clients"]: r for r in levels}
    goal = None
    if 1 in by and 8 in by:
        ratio = by[8]["tokens_per_s"] / by[1]["tokens_per_s"]
        goal = {"ratio_8_to_1": round(ratio, 2), "met": ratio >= 1.5}
        print(
            f"goal: 8 clients >= 1.5x the tokens/s of 1 client: {ratio:.2f}x ({'met' if ratio >= 1.5 else 'NOT met'})"
        )
    print(
        f"engine: {engine['steps']} steps, at most {engine['max_rows_in_step']} rows in one, "
        f"{engine['rejected']} rejected"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "checkpoint": args.checkpoint,
                    "device": args.device,
                    "max_tokens": args.max_tokens,
                    "levels": levels,
                    "sample_py": sample,
                    "goal": goal,
                    "engine": engine,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    if any(r["errors"] for r in levels):
        raise SystemExit(f"errors: {[r['first_error'] for r in levels if r['errors']]}")


if __name__ == "__main__":
    main()
