"""`mlx-slm serve` under load, side by side with `mlx_lm.server` on the same weights.

Each server runs alone as a subprocess on loopback, on a synthetic 270M-shape checkpoint
converted once (float32, the Llama-2 tokenizer): it loads in both. The same streaming
/v1/completions load goes to each (greedy):
  - aggregate generation throughput (completion tokens / wall time) with 1 and 8 concurrent
    streams, and time to first token (p50, p95) measured by the client. Both sides do the
    same work: every request has its own prompt of the same token length, with a different
    first word (no prompt is cached, nor shares a prefix with another), our prefix cache is
    off for these runs, and each request generates exactly `--tokens` tokens (ignore_eos;
    counted from the server's usage). Ours also reports where the worker's time went per
    decode step (admission, forward, sampling, emit, copies), read from /metrics;
  - ours only: a repeated chat prefix (the second turn's TTFT over the first's, on a server
    with its prefix cache on), and the server's overhead per request on a tiny model
    (1 token) over the bare generation call.
Writes benchmarks/results/serve-<date>.json.

    python benchmarks/serve.py [--tokens 16] [--streams 8] [--skip-mlx-lm]
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"
TOKENIZER = Path(__file__).parents[1] / "tests" / "data" / "llama2-tokenizer.model"
WORDS = ["river", "mountain", "city", "lake", "forest", "desert", "ocean", "island", "valley",
         "bridge"]
# Single-token words (Llama-2 tokenizer) that open the prompts: prompt i starts with a word
# of its own, so no prompt shares a prefix with another (nor with the warm-up's).
OPENERS = ["Red", "Blue", "Green", "Black", "White", "Brown", "Gold", "Silver", "Gray",
           "Orange", "North", "South", "East", "West", "Old", "New", "Big", "Small", "Long",
           "Short", "High", "Low", "Hot", "Cold", "Dark", "Light", "Fast", "Deep", "Early",
           "Late", "First", "Last", "Good", "Bad", "Young", "Great", "Little", "Open"]


def prompt(i: int, words: int = 48) -> str:
    """Prompt `i`: its own first word, then `words` words (all single tokens)."""
    return OPENERS[i] + " " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words))


def check_prompts(count: int) -> int:
    """The token length shared by prompts 0..count-1 (an error if they differ)."""
    from mlx_slm.tokenizer import Tokenizer

    if count > len(OPENERS):
        raise SystemExit(f"at most {len(OPENERS)} distinct prompts (lower --rounds/--streams)")
    tokenizer = Tokenizer(TOKENIZER)
    lengths = {len(tokenizer.encode(prompt(i))) for i in range(count)}
    if len(lengths) != 1:
        raise SystemExit(f"prompts of unequal token lengths: {sorted(lengths)}")
    return lengths.pop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess: ours or mlx-lm's, on a free port, until `stop`."""

    def __init__(self, kind: str, model_dir: Path, port: int, prefix_cache: bool = True):
        command = ([sys.executable, "-m", "mlx_slm", "serve", "--model", str(model_dir)]
                   + ([] if prefix_cache else ["--prefix-cache-mb", "0"])
                   if kind == "ours" else
                   [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir)])
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command + ["--port", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"{kind} server exited with {self.process.returncode}")
            try:
                httpx.get(self.url + "/v1/models", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{kind} server did not start") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def stream_one(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """One streaming request: client-side TTFT, end time and completion tokens (the
    server's usage count when it sends one, else the chunks with text)."""
    start = time.perf_counter()
    first, chunks, usage, times = None, 0, None, []
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                if choice.get("text") or (choice.get("delta") or {}).get("content"):
                    times.append(time.perf_counter())
                    first = first or times[-1]
                    chunks += 1
    tokens = usage["completion_tokens"] if usage else chunks
    return {"start": start, "ttft_s": (first or time.perf_counter()) - start,
            "end": time.perf_counter(), "tokens": tokens, "times": times}


async def load(url: str, model: str, streams: int, tokens: int, rounds: int,
               first: int = 0) -> dict:
    """`streams` concurrent clients, each sending `rounds` requests one after another, with
    prompts `first`, `first` + 1, ..."""
    async def client_loop(client, c):
        out = []
        for r in range(rounds):
            body = {"model": model, "prompt": prompt(first + c * rounds + r),
                    "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
            out.append(await stream_one(client, url + "/v1/completions", body))
        return out

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        done = await asyncio.gather(*(client_loop(client, c) for c in range(streams)))
        wall = time.perf_counter() - start
    results = [r for client_results in done for r in client_results]
    ttfts = sorted(r["ttft_s"] for r in results)
    total = sum(r["tokens"] for r in results)
    # Decode speed of one stream, as generate reports it: the tokens after the first, over
    # the time from the first to the last.
    decode = [(len(r["times"]) - 1) / (r["times"][-1] - r["times"][0])
              for r in results if len(r["times"]) > 1]
    return {"streams": streams, "requests": len(results), "completion_tokens": total,
            "wall_s": wall, "tokens_per_s": total / wall,
            "decode_tps_p50": statistics.median(decode) if decode else None,
            "ttft_p50_s": statistics.median(ttfts),
            "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]}


async def long_prompt_gaps(url: str, model: str, tokens: int, words: int) -> dict:
    """A stream of `tokens` tokens, and once it runs, a request whose prompt has about
    `words` * 2.6 tokens: the stream's gaps between tokens while that prompt is read, against
    its median gap (chunked prefill keeps the worst near one step plus one chunk)."""
    long_prompt = " ".join(f"w{i % 97}" for i in range(words))
    async with httpx.AsyncClient(timeout=600) as client:
        body = {"model": model, "prompt": prompt(0), "max_tokens": tokens, "temperature": 0,
                "ignore_eos": True}
        stream = asyncio.ensure_future(stream_one(client, url + "/v1/completions", body))
        await asyncio.sleep(0)
        while True:  # wait until the stream has produced a few tokens
            await asyncio.sleep(0.05)
            if stream.done():
                raise SystemExit("the stream ended before the long prompt was sent")
            if await _tokens_so_far(url) >= 8:
                break
        sent = time.perf_counter()
        answer = (await client.post(url + "/v1/completions", json={
            "model": model, "prompt": long_prompt, "max_tokens": 1, "temperature": 0})).json()
        done = time.perf_counter()
        result = await stream
    times = result["times"]
    pairs = list(zip(times, times[1:]))
    during = [b - a for a, b in pairs if b > sent and a < done]
    # The stream's usual gap: its gaps while no long prompt is being read.
    median = statistics.median(b - a for a, b in pairs if b <= sent or a >= done)
    return {"prompt_tokens": answer["usage"]["prompt_tokens"], "admission_s": done - sent,
            "median_gap_s": median, "worst_gap_during_s": max(during) if during else None,
            "median_gap_during_s": statistics.median(during) if during else None,
            "worst_over_median": max(during) / median if during else None,
            "tokens_during": len(during)}


async def _tokens_so_far(url: str) -> float:
    async with httpx.AsyncClient(timeout=30) as client:
        text = (await client.get(url + "/metrics")).text
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("mlx_slm_generation_tokens_total "))


def generate_tps(model_dir: Path, tokens: int) -> float:
    """`mlx-slm generate`'s own decode speed on the model (EOS ignored), in a subprocess."""
    done = subprocess.run([sys.executable, "-m", "mlx_slm", "generate", "-m", str(model_dir),
                           "-p", prompt(0), "-n", str(tokens), "--ignore-eos", "--no-chat",
                           "--temp", "0", "--repetition-penalty", "1", "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["generation_tps"]


def measure_server(kind: str, model_dir: Path, args) -> dict:
    ours = kind == "ours"
    server = Server(kind, model_dir, port=args.port, prefix_cache=False)
    try:
        model = str(model_dir)
        asyncio.run(load(server.url, model, 1, 4, 1))  # warm-up: prompt 0
        out = {}
        for name, streams, first in (("one_stream", 1, 1),
                                     ("concurrent", args.streams, 1 + args.rounds)):
            before = worker_times(server.url) if ours else None
            out[name] = asyncio.run(load(server.url, model, streams, args.tokens, args.rounds,
                                         first))
            if ours:
                out[name]["per_step_ms"] = per_step(before, worker_times(server.url))
        out["speedup"] = out["concurrent"]["tokens_per_s"] / out["one_stream"]["tokens_per_s"]
        if ours and args.long_prompt_words:
            out["long_prompt"] = asyncio.run(long_prompt_gaps(
                server.url, model, args.long_prompt_tokens, args.long_prompt_words))
    finally:
        server.stop()
    if ours:  # single-stream decode through the server against generate's, same model
        out["generate_tps"] = generate_tps(model_dir, args.tokens)
        out["one_stream_over_generate"] = (out["one_stream"]["decode_tps_p50"]
                                           / out["generate_tps"])
    if ours:  # the prefix cache on, as served by default
        server = Server(kind, model_dir, port=args.port)
        try:
            out["chat_prefix"] = chat_prefix(server.url, str(model_dir))
        finally:
            server.stop()
    print(f"{kind}: {json.dumps(out)}", file=sys.stderr)
    return out


def worker_times(url: str) -> dict:
    """The worker's seconds by phase and its decode steps so far, from /metrics."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("mlx_slm_worker_seconds_total{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("mlx_slm_decode_steps_total "):
            out["steps"] = float(line.rsplit(" ", 1)[1])
    return out


def per_step(before: dict, after: dict) -> dict:
    """Milliseconds per decode step in each phase between two scrapes (admission, which
    includes prefill, spread over the steps too)."""
    steps = max(after["steps"] - before["steps"], 1)  # 1-token requests take no step
    return {"steps": steps, **{phase: (after[phase] - before[phase]) / steps * 1e3
                               for phase in after if phase != "steps"}}


def chat_prefix(url: str, model: str) -> dict:
    """TTFT of a chat's second turn (its first turn cached) over the first turn's."""
    system = "You answer questions about geography. " + prompt(0, 300)
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Name a lake."}]

    def ask(messages):
        start = time.perf_counter()
        answer = httpx.post(url + "/v1/chat/completions", timeout=600, json={
            "model": model, "messages": messages, "max_tokens": 8, "temperature": 0}).json()
        return answer, answer["usage"]["timings"]["ttft_s"], time.perf_counter() - start

    one, ttft_1, _ = ask(first)
    follow = first + [{"role": "assistant", "content": one["choices"][0]["message"]["content"]},
                      {"role": "user", "content": "And a river?"}]
    two, ttft_2, _ = ask(follow)
    return {"prompt_tokens": [one["usage"]["prompt_tokens"], two["usage"]["prompt_tokens"]],
            "cached_tokens": two["usage"]["prompt_tokens_details"]["cached_tokens"],
            "ttft_first_s": ttft_1, "ttft_second_s": ttft_2, "ratio": ttft_2 / ttft_1}


def overhead(tiny_dir: Path, port: int, repeats: int) -> dict:
    """Request round trip (1 token) minus the bare generation call, taken pair by pair
    (bare, request, bare, request, ...) so that the machine's load drifts out; medians."""
    from mlx_slm.generation import generate_tokens
    from mlx_slm.loader import load as load_model

    model, tokenizer = load_model(tiny_dir)
    ids = tokenizer.encode("Hello there")
    server = Server("ours", tiny_dir, port)
    pairs = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for n in range(repeats + 3):
                start = time.perf_counter()
                list(generate_tokens(model, ids, max_tokens=1))
                bare = time.perf_counter() - start
                start = time.perf_counter()
                answer = client.post("/v1/completions", json={
                    "prompt": "Hello there", "max_tokens": 1, "temperature": 0})
                request = time.perf_counter() - start
                timings = answer.json()["usage"]["timings"]
                # The same request's own generation call, timed inside the server.
                inside = timings["prompt_s"] + timings["generation_s"]
                start = time.perf_counter()
                client.get("/health").raise_for_status()  # the HTTP round trip alone
                if n >= 3:  # warm-up
                    pairs.append((bare, request, time.perf_counter() - start, inside))
    finally:
        server.stop()
    return {"bare_ms": statistics.median(p[0] for p in pairs) * 1e3,
            "request_ms": statistics.median(p[1] for p in pairs) * 1e3,
            "health_ms": statistics.median(p[2] for p in pairs) * 1e3,
            "overhead_ms": statistics.median(p[1] - p[0] for p in pairs) * 1e3,
            "overhead_in_request_ms": statistics.median(p[1] - p[3] for p in pairs) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16, help="Tokens per request.")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="Requests per client.")
    parser.add_argument("--port", type=int, default=0, help="Default: a free port.")
    parser.add_argument("--repeats", type=int, default=20, help="Overhead samples.")
    parser.add_argument("--skip-mlx-lm", action="store_true")
    parser.add_argument("--tiny", action="store_true",
                        help="The tiny model instead of the 270M shape: a smoke test of the "
                        "script, whose figures mean nothing.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Where the JSON goes (default: benchmarks/results/).")
    parser.add_argument("--overhead-only", action="store_true",
                        help="Only the per-request overhead (tiny model); no 270M runs.")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        default="float32", help="The served model's dtype (270M shape).")
    parser.add_argument("--long-prompt-words", type=int, default=650,
                        help="A long prompt admitted beside a running stream (about 2.6 "
                             "tokens a word; 0: skip).")
    parser.add_argument("--long-prompt-tokens", type=int, default=96,
                        help="Tokens of the stream that runs while it is admitted.")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="OPENBLAS_NUM_THREADS for both servers (default: as set).")
    args = parser.parse_args()
    args.port = args.port or free_port()
    if args.blas_threads:
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)

    import mlx_slm  # noqa: F401  (the optimized BLAS before mlx, as the servers get it)
    from mlx_slm.bench.machine import machine_info
    from mlx_slm.convert.pipeline import convert
    from mlx_slm.synthetic import published_config, tiny_config, write_hub_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = write_hub_checkpoint(tmp / "tiny", tiny_config())
        shutil.copy(TOKENIZER, tiny / "tokenizer.model")
        record = {"benchmark": "serve", **machine_info(), "load_average": os.getloadavg(),
                  "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                  "dtype": args.dtype, "overhead": overhead(tiny, args.port, args.repeats)}
        if args.overhead_only:
            record["shape"] = "tiny (3 layers, model_dim 64)"
        else:
            config = tiny_config() if args.tiny else published_config("270M")
            hub = write_hub_checkpoint(tmp / "hub", config)
            model_dir = tmp / ("tiny-synthetic" if args.tiny else "OpenELM-270M-synthetic")
            convert(hub, model_dir, tokenizer=str(TOKENIZER), dtype=args.dtype,
                    log=lambda _: None)
            prompt_tokens = check_prompts(1 + args.rounds + args.streams * args.rounds)
            record.update(shape="tiny (smoke test)" if args.tiny else
                          "OpenELM-270M (synthetic weights)", tokens=args.tokens,
                          streams=args.streams, rounds=args.rounds, prompt_tokens=prompt_tokens,
                          ours=measure_server("ours", model_dir, args))
        if not (args.skip_mlx_lm or args.overhead_only):
            from importlib import metadata

            record["mlx_lm_version"] = metadata.version("mlx-lm")
            record["mlx_lm"] = measure_server("mlx_lm", model_dir, args)
            ours, theirs = record["ours"]["concurrent"], record["mlx_lm"]["concurrent"]
            record["ours_over_mlx_lm"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    RESULTS.mkdir(exist_ok=True)
    kind = "serve-overhead" if args.overhead_only else "serve"
    out = args.out or RESULTS / f"{kind}-{record['date'][:10]}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(summary(record) + f"\nsaved {out}")


def summary(r: dict) -> str:
    lines = [f"mlx-slm serve benchmark: {r['backend']} backend ({r['blas']}), {r['cpu']}, "
             f"{r['cores']} cores, load average {r['load_average'][0]:.1f}, {r['dtype']}, "
             f"{r['shape']}, {r['date']}"]
    if "ours" in r:
        ours = r["ours"]
        lines.append(f"{r['streams']} streams vs 1: {ours['speedup']:.2f}x aggregate throughput "
                     f"({ours['concurrent']['tokens_per_s']:.2f} vs "
                     f"{ours['one_stream']['tokens_per_s']:.2f} tok/s; target >= 4x)")
        if "mlx_lm" in r:
            theirs = r["mlx_lm"]
            lines.append(
                f"vs mlx_lm.server {r['mlx_lm_version']} ({r['streams']} streams): "
                f"{r['ours_over_mlx_lm']:.2f}x throughput (target >= 1.5x); TTFT p50 "
                f"{ours['concurrent']['ttft_p50_s']:.2f} vs "
                f"{theirs['concurrent']['ttft_p50_s']:.2f} s, p95 "
                f"{ours['concurrent']['ttft_p95_s']:.2f} vs "
                f"{theirs['concurrent']['ttft_p95_s']:.2f} s; mlx_lm {r['streams']} vs 1: "
                f"{theirs['speedup']:.2f}x")
        lines.append(f"single stream through the server: {ours['one_stream_over_generate']:.2f}x "
                     f"generate's decode ({ours['one_stream']['decode_tps_p50']:.2f} vs "
                     f"{ours['generate_tps']:.2f} tok/s; target >= 0.95x)")
        if "long_prompt" in ours:
            lp = ours["long_prompt"]
            lines.append(f"a {lp['prompt_tokens']}-token prompt admitted beside a stream: worst "
                         f"gap {lp['worst_gap_during_s']:.3f} s = {lp['worst_over_median']:.1f}x "
                         f"its usual median {lp['median_gap_s']:.3f} s (median while it was "
                         f"read {lp['median_gap_during_s']:.3f} s, {lp['tokens_during']} tokens; "
                         f"admitted in {lp['admission_s']:.1f} s; target <= 3x)")
        for side in ("one_stream", "concurrent"):
            step = ours[side]["per_step_ms"]
            lines.append(f"  {side}: ms per decode step ({step['steps']:.0f} steps): " + ", ".join(
                f"{phase} {step[phase]:.1f}" for phase in step if phase != "steps"))
        prefix = ours["chat_prefix"]
        lines.append(f"repeated chat prefix: second TTFT {prefix['ratio']:.2f}x the first "
                     f"({prefix['cached_tokens']} of {prefix['prompt_tokens'][1]} tokens "
                     "cached; target <= 0.3x)")
    o = r["overhead"]
    lines.append(f"overhead per request (tiny model, 1 token): {o['overhead_ms']:.1f} ms over "
                 f"the bare call ({o['request_ms']:.1f} ms round trip vs {o['bare_ms']:.1f} ms; "
                 f"target <= 5 ms); {o['overhead_in_request_ms']:.1f} ms over the request's own "
                 f"generation call timed in the server; GET /health alone {o['health_ms']:.1f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
