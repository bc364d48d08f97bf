"""`minillm serve`: an OpenAI-compatible HTTP server over one model, with a chat page.

    minillm serve --hf-dir DIR | --ckpt DIR [--dtype float32|bf16|int8] [--host 127.0.0.1]
                  [--port 8000] [--max-batch 8] [--max-queue 64] [--max-tokens N] ...

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="NAME", messages=[{"role": "user", "content": "Hi"}])

Needs the optional extra `pip install minillm[serve]` (Starlette and uvicorn). The parts:
schemas.py (request checking), runner.py (the engine's worker thread), text.py (streamed
text and stop strings), chat.py (chat templates), app.py (routes, SSE, logs), static/ (the
page at /). The command line calls add_arguments(parser) and run(args); main(argv) is the
same as a program of its own (`python -m minillm.serve`).
"""
import argparse
import logging
import sys

__all__ = ["add_arguments", "run", "main", "load_for_serving", "build_app"]

from minillm.inference import DTYPES, KV_CHOICES


def add_arguments(p):
    """Declare serve's flags on an argparse parser (or sub-parser)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-dir", metavar="DIR", help="a model folder in HuggingFace's layout (GPT-2, Llama, Qwen, ...)")
    src.add_argument("--ckpt", metavar="DIR", help="a minillm checkpoint (or run) folder")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights the decoder streams: float32, bf16 or int8 (default: as the folder stores "
                        "them: int8 for a folder `minillm quantize --dtype int8` wrote, else float32)")
    p.add_argument("--kv-dtype", choices=KV_CHOICES, default=None,
                   help="the KV caches' dtype (default: bf16 with bf16 or int8 weights, float32 with float32)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-name", default=None,
                   help="the model id clients give (default: the folder's name)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="sequences that may wait for a slot; more get a 429 (default 64)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="the most new tokens a request may ask for (default: the model's context)")
    p.add_argument("--max-body-mb", type=float, default=1.0,
                   help="the largest request body in megabytes; larger gets a 413 (default 1)")
    p.add_argument("--threads", type=int, default=None, help="threads for the model (default: all cores)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log level (default info: one line per request)")
    return p


def load_for_serving(hf_dir=None, ckpt=None, dtype="float32"):
    """(model, its tokenizer, a default model name): minillm.inference.load_for_inference."""
    from minillm.inference import load_for_inference
    return load_for_inference(hf_dir, ckpt, dtype)


def build_app(model, tokenizer, model_name, dtype="float32", max_batch=8, max_queue=64, max_tokens=None,
              max_body_bytes=1 << 20, kv_dtype=None):
    """The ASGI app over `model`: an Engine (decode plan in `dtype`, KV caches in kv_dtype) and
    the routes."""
    from minillm.engine import Engine
    from minillm.inference import plan_options
    from .app import create_app
    from .schemas import Limits
    for name, v in (("max_batch", max_batch), ("max_queue", max_queue)):
        if v < 1:
            raise ValueError(f"serve: --{name.replace('_', '-')} must be >= 1, got {v}")
    context = model.config.block_size
    limits = Limits(max_tokens=min(max_tokens or context, context))
    engine = Engine(model, max_batch=max_batch, decoder=model.decoder(**plan_options(model, dtype, kv_dtype)))
    return create_app(model, engine, model_name, tokenizer=tokenizer, limits=limits, max_queue=max_queue,
                      max_body_bytes=max_body_bytes)


def run(args):
    """Load the model the flags name and serve it until interrupted; returns an exit code."""
    try:
        import uvicorn
    except ImportError:
        print("minillm serve needs Starlette and uvicorn: pip install 'minillm[serve]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        from minillm import set_num_threads
        set_num_threads(args.threads)
    model, tokenizer, name = load_for_serving(args.hf_dir, args.ckpt, dtype=args.dtype)
    from minillm.inference import resolve_dtype
    args.dtype = resolve_dtype(model, args.dtype)
    if args.max_body_mb <= 0:
        raise ValueError(f"serve: --max-body-mb must be > 0, got {args.max_body_mb}")
    app = build_app(model, tokenizer, args.model_name or name, dtype=args.dtype, max_batch=args.max_batch,
                    max_queue=args.max_queue, max_tokens=args.max_tokens,
                    max_body_bytes=int(args.max_body_mb * (1 << 20)), kv_dtype=args.kv_dtype)
    logging.getLogger("minillm.serve").info(
        "serving %s (%s parameters, context %d, decoder %s, batch %d) on http://%s:%d", args.model_name or name,
        f"{model.num_params():,}", model.config.block_size, args.dtype, args.max_batch, args.host, args.port)
    # uvicorn's access log is off: RequestLog writes one richer line per request
    # (on Ctrl-C, replies still streaming get 5 s to finish before their connections are closed)
    try:
        uvicorn.run(app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=5,
                    log_level="warning" if args.log_level == "info" else args.log_level)
    except KeyboardInterrupt:             # uvicorn re-raises the Ctrl-C it shut down for
        pass
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="minillm serve", description="An OpenAI-compatible HTTP server over one model, "
                                "with continuous batching and a chat page at /.")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"minillm serve: {e}", file=sys.stderr)
        return 1
