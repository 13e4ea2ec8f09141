"""alignlab serve: N concurrent requests against the same N one after another, over loopback HTTP.

    python bench/serve_batching.py --model smollm2-135m-instruct --requests 8 --max-tokens 32

Each request asks for exactly `--max-tokens` tokens (ignore_eos), each with its own seed. Reported: decode
steps (batched forwards, the number continuous batching cuts from N x max_tokens to about max_tokens), wall
seconds and process CPU seconds of each way, and their ratios; the CPU model and torch thread count are
printed with them. On a shared machine the CPU clock is the steadier of the two. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
import urllib.request


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)

    import torch

    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.serve import ModelServer, base_url, make_http_server

    torch.set_num_threads(args.threads)
    server = ModelServer(load_model(args.model), load_tokenizer(args.model), model_id="bench")
    httpd = make_http_server(server, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = base_url(httpd) + "/completions"

    def post(i: int) -> None:
        body = {"prompt": f"Tell me a story about the number {i}.", "max_tokens": args.max_tokens,
                "ignore_eos": True, "seed": i}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] == args.max_tokens

    def run(concurrent: bool) -> tuple[float, float, int]:
        steps, wall, cpu = server.engine.steps, time.perf_counter(), time.process_time()
        if concurrent:
            threads = [threading.Thread(target=post, args=(i,)) for i in range(args.requests)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for i in range(args.requests):
                post(i)
        return time.perf_counter() - wall, time.process_time() - cpu, server.engine.steps - steps

    post(-1)  # warm-up
    seq, con = run(False), run(True)
    print(f"{args.requests} x {args.max_tokens} tokens, {args.model}, {_cpu_model()}, {torch.get_num_threads()} thread(s)")
    print(f"one after another: {seq[0]:.2f} s wall, {seq[1]:.2f} s CPU, {seq[2]} decode steps")
    print(f"concurrent:        {con[0]:.2f} s wall, {con[1]:.2f} s CPU, {con[2]} decode steps")
    print(json.dumps({"model": args.model, "cpu": _cpu_model(), "threads": torch.get_num_threads(),
                      "requests": args.requests, "max_tokens": args.max_tokens,
                      "sequential_steps": seq[2], "concurrent_steps": con[2],
                      "wall_speedup": round(seq[0] / con[0], 2), "cpu_speedup": round(seq[1] / con[1], 2)}))
    httpd.shutdown()
    server.close()


if __name__ == "__main__":
    main()
