"""CLI registration for `alignlab eval --config FILE` and `alignlab serve MODEL` (imports stay light)."""

from __future__ import annotations

import argparse
import sys

from alignlab.cli import command, config_command
from alignlab.eval.runner import EvalConfig


def _eval(cfg: EvalConfig) -> None:
    from alignlab.api import evaluate

    evaluate(cfg)


config_command(
    "eval",
    "Evaluate checkpoints: reward / DPO accuracy, win rate under a judge, ratings, KL, perplexity, mean reward; "
    "writes eval.json and report.html.",
    EvalConfig,
    _eval,
)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model to serve: alias (tiny-random, smollm2-135m-instruct), HF dir or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free port; the bound URL is printed)")
    p.add_argument("--model-id", default=None, help="model id reported by /v1/models (default: MODEL)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16 or auto")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout per connection, seconds")
    p.add_argument("--max-connections", type=int, default=64, help="open connections at once; beyond: 503")
    p.add_argument("--quiet", action="store_true", help="do not log one line per request")
    p.add_argument("--max-batch", "--batch-size", type=int, default=64,
                   help="sequences decoded together (continuous batching); as SamplingConfig.batch_size")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond the batch; beyond: 503")
    p.add_argument("--max-n", type=int, default=64, help="largest n (samples per prompt) a request may ask")
    p.add_argument("--no-load-weights", action="store_true", help="disable POST /v1/load_weights")
    p.add_argument("--admin-token-env", default=None, help="env var holding the bearer token /v1/load_weights needs")
    p.add_argument("--weights-root", default=None, help="/v1/load_weights loads only directories under this one")
    from alignlab.rollout.speculative import add_speculative_args

    add_speculative_args(p)  # requests with one prompt, n = 1, no log-probs: one at a time, outside the batch


@command("serve", "Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions).",
         _serve_args)
def _serve(args: argparse.Namespace) -> None:
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.speculative import decoding_from_args, parse_flag
    from alignlab.serve import ModelServer, base_url, make_http_server

    limits = {"--max-connections": args.max_connections, "--max-tokens-limit": args.max_tokens_limit,
              "--max-body-bytes": args.max_body_bytes, "--max-batch": args.max_batch, "--max-queue": args.max_queue,
              "--max-n": args.max_n}
    low = [f"{flag} {value}" for flag, value in limits.items() if value < 1]
    low += [] if args.timeout > 0 else [f"--timeout {args.timeout}"]
    if low:  # before the model loads: such a server would refuse every request
        from alignlab.errors import AlignlabError

        raise AlignlabError(f"serve: {', '.join(low)}: the limits must be >= 1 and --timeout > 0")
    decoding = decoding_from_args(args, "serve")
    heads_dir = parse_flag(args.speculative, "serve") if decoding is not None else None
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    tokenizer = load_tokenizer(args.model)
    speculative = None
    if heads_dir is not None:
        from alignlab.models.medusa import load_medusa

        speculative = (load_medusa(heads_dir, model), decoding)
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    server = ModelServer(model, tokenizer, model_id=args.model_id or args.model, aliases=(args.model,),
                         max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit,
                         max_batch=args.max_batch, max_queue=args.max_queue, max_n=args.max_n,
                         # weight pushes: loopback or a token
                         load_weights=not args.no_load_weights and (loopback or args.admin_token_env is not None),
                         admin_token_env=args.admin_token_env, weights_root=args.weights_root,
                         speculative=speculative)
    httpd = make_http_server(server, args.host, args.port, socket_timeout=args.timeout, quiet=args.quiet,
                             max_connections=args.max_connections)
    print(f"alignlab serve: {args.model} at {base_url(httpd)}", flush=True)
    if not loopback:
        print("alignlab serve: warning: bound beyond loopback; completions need no authentication "
              "(/v1/load_weights is off unless --admin-token-env)", file=sys.stderr)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
