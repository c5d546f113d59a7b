"""``xmedgpt serve --model DIR``: this machine's model as an OpenAI-compatible server.

Loopback only unless an API key is given; the key can come from the
``XMEDGPT_API_KEY`` environment variable so it stays out of the process list.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a local model over an OpenAI-compatible HTTP API",
        description="Load the model in DIR and answer OpenAI-style /v1/chat/completions requests "
        "(stream, n, logprobs). Listens on 127.0.0.1 unless --host says otherwise; any other "
        "address needs an API key.",
    )
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="native InternVL model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", help="bearer token clients must send (default: $XMEDGPT_API_KEY)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quantization", default="auto", choices=["auto", "nf4", "int8", "bf16", "none"],
                   help="auto: 4-bit on CUDA, full precision on CPU")
    p.add_argument("--max-request-mb", type=float, default=32.0, help="largest accepted request (default 32 MB)")
    p.add_argument("--name", help="model name reported to clients (default: the model's own name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inference.engine.local import LocalEngine
    from inference.server import EngineServer, is_loopback

    api_key = args.api_key or os.environ.get("XMEDGPT_API_KEY") or None
    # Refuse an unsafe bind before spending minutes loading the model.
    if not is_loopback(args.host) and not api_key:
        from app.errors import XMedError

        raise XMedError(f"Serving on {args.host} would expose the model to the network; "
                        "set an API key (--api-key or XMEDGPT_API_KEY) or serve on 127.0.0.1.")
    engine = LocalEngine.from_folder(
        args.model, device=args.device, quantization=args.quantization,
        progress=lambda message, fraction: log.info("loading model: %s (%d%%)", message, fraction * 100),
    )
    server = EngineServer(engine, host=args.host, port=args.port, api_key=api_key,
                          max_request_bytes=int(args.max_request_mb * 1024 * 1024), model_name=args.name)
    print(f"Serving {engine.describe()} at {server.url} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
    return 0
