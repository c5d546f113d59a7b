"""``xmedgpt serve --model DIR``: this machine's model as an OpenAI-compatible server.

Loopback only unless an API key is given; the key can come from the
``XMEDGPT_API_KEY`` environment variable so it stays out of the process list.
Every argument is checked before the model is loaded (minutes on a large model).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from inference import server as srv
from inference.errors import XMedError

log = logging.getLogger(__name__)

#: Largest --max-request-mb.
MAX_REQUEST_MB = 1024.0

#: ServerLimits field -> the flag that sets it (for error messages).
_FLAGS = {
    "context_tokens": "--context-tokens",
    "max_concurrent": "--max-concurrent",
    "max_queue": "--max-queue",
    "request_timeout": "--request-timeout",
    "read_timeout": "--read-timeout",
    "max_connections": "--max-connections",
}


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
    p.add_argument("--max-request-mb", type=float, default=srv.MAX_REQUEST_BYTES / 1024 / 1024,
                   help=f"largest accepted request (default {srv.MAX_REQUEST_BYTES // 1024 // 1024} MB)")
    p.add_argument("--context-tokens", type=int, metavar="N",
                   help="prompt + answer tokens per request (default: the model's own context length)")
    p.add_argument("--max-concurrent", type=int, default=srv.MAX_CONCURRENT, metavar="K",
                   help=f"requests generating at once (default {srv.MAX_CONCURRENT})")
    p.add_argument("--max-queue", type=int, default=srv.MAX_QUEUE, metavar="N",
                   help=f"requests waiting for the model; more are answered 503 (default {srv.MAX_QUEUE})")
    p.add_argument("--request-timeout", type=float, default=srv.REQUEST_TIMEOUT_S, metavar="S",
                   help=f"seconds per request, queue wait included (default {srv.REQUEST_TIMEOUT_S:g})")
    p.add_argument("--read-timeout", type=float, default=srv.READ_TIMEOUT_S, metavar="S",
                   help=f"seconds a client has to send a request (default {srv.READ_TIMEOUT_S:g})")
    p.add_argument("--max-connections", type=int, default=srv.MAX_CONNECTIONS, metavar="N",
                   help=f"open connections at once (default {srv.MAX_CONNECTIONS})")
    p.add_argument("--name", help="model name reported to clients (default: the model's own name)")
    p.set_defaults(func=run)


def check_arguments(args: argparse.Namespace) -> tuple[str | None, srv.ServerLimits]:
    """Every argument checked and converted without loading anything.

    Returns ``(api_key, limits)``; raises :class:`XMedError` with one line naming the argument.
    """
    mb = args.max_request_mb
    if not (math.isfinite(mb) and 0 < mb <= MAX_REQUEST_MB):
        raise XMedError(f"--max-request-mb must be above 0 and at most {MAX_REQUEST_MB:g} (got {mb:g}).")
    if args.name is not None and not args.name.strip():
        raise XMedError("--name must not be blank.")
    try:
        limits = srv.ServerLimits(
            max_request_bytes=max(1, int(mb * 1024 * 1024)),
            context_tokens=args.context_tokens,
            max_concurrent=args.max_concurrent,
            max_queue=args.max_queue,
            request_timeout=args.request_timeout,
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
        )
    except srv.LimitError as exc:
        raise XMedError(f"{_FLAGS.get(exc.field, exc.field)} {exc.requirement}.") from exc
    # A blank key (flag or $XMEDGPT_API_KEY) counts as no key.
    given = (args.api_key or "").strip() or (os.environ.get("XMEDGPT_API_KEY") or "").strip()
    api_key = srv.check_listen(args.host, args.port, given or None)
    srv.check_bindable(args.host, args.port)
    if not args.model.is_dir():
        raise XMedError(f"No model folder at {args.model}.")
    from app.models.registry import require_native_model_folder

    require_native_model_folder(args.model)  # the same folder check as models add and analyze --model
    return api_key, limits


def run(args: argparse.Namespace) -> int:
    api_key, limits = check_arguments(args)  # before spending minutes loading the model

    from inference.engine.local import LocalEngine

    extra = {"context": limits.context_tokens} if limits.context_tokens else {}
    engine = LocalEngine.from_folder(
        args.model, device=args.device, quantization=args.quantization,
        progress=lambda message, fraction: log.info("loading model: %s (%d%%)", message, fraction * 100),
        **extra,
    )
    server = srv.EngineServer(
        engine, host=args.host, port=args.port, api_key=api_key, max_request_bytes=limits.max_request_bytes,
        model_name=args.name.strip() if args.name else None, context_tokens=limits.context_tokens,
        max_concurrent=limits.max_concurrent, max_queue=limits.max_queue, request_timeout=limits.request_timeout,
        read_timeout=limits.read_timeout, max_connections=limits.max_connections,
    )
    print(f"Serving {engine.describe()} at {server.url} (Ctrl+C to stop; context {server.limits.context} tokens, "
          f"{limits.max_concurrent} at once, {limits.max_queue} queued)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
    return 0
