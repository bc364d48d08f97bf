"""`minillm serve` under load: total tokens/s and time to first token with 1, 4 and 8
concurrent streaming clients, for gpt-mini and a GPT-2-small-shaped model (random weights).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
        python bench/bench_serve.py [--models gpt-mini,gpt2-small] [--clients 1,4,8] \
                                    [--prompt-tokens 16] [--max-tokens 128] [--dtype float32]
    ... python bench/bench_serve.py --quick        (a seconds-long run that checks the bench works)

The server is the real app on uvicorn in this process (its engine worker thread does the
model work); each client is a thread holding one HTTP connection, sending a streamed
/v1/completions request with a prompt of token ids and reading its server-sent events.
Clients start together; a row reports, over all clients: total completion tokens / wall
time (tokens/s), time to first token (median and worst, from sending the request to the first
chunk with text), and each client's decoding rate (tokens after the first / time after the
first, median). Stop tokens are off (the model has no tokenizer of its own here), so every
client gets exactly --max-tokens tokens. The CPU and the thread count head the output.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minillm  # noqa: E402
from conftest import cpu_model  # noqa: E402  (bench/conftest.py)
from minillm.models import build_model  # noqa: E402
from minillm.tokenizers import load_tokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_TOKENIZER = os.path.join(HERE, "..", "tests", "fixtures", "gpt2_tiny")


def start_server(app):
    """uvicorn over `app` on a free port in a daemon thread; returns (server, port, thread)."""
    import socket
    import uvicorn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return server, sock.getsockname()[1], thread


def one_client(port, prompt, max_tokens, start, out):
    """One streamed completion; appends (ttft s, tokens, seconds after the first token)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start.wait()
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first, tokens = None, 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif first is None and chunk["choices"]:
            first = time.perf_counter()
    end = time.perf_counter()
    conn.close()
    out.append((first - t0, tokens, end - first))


def run_load(port, clients, prompt, max_tokens):
    results, start = [], threading.Barrier(clients + 1)
    threads = [threading.Thread(target=one_client, args=(port, prompt, max_tokens, start, results))
               for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if len(results) != clients:
        raise RuntimeError(f"{clients - len(results)} of {clients} clients failed")
    ttft = [r[0] for r in results]
    rates = [(r[1] - 1) / r[2] for r in results if r[2] > 0 and r[1] > 1]
    return {"clients": clients, "tokens_per_s": sum(r[1] for r in results) / wall,
            "ttft_median_ms": 1000 * statistics.median(ttft), "ttft_max_ms": 1000 * max(ttft),
            "client_rate": statistics.median(rates) if rates else float("nan")}


def bench_model(preset, clients_list, prompt_tokens, max_tokens, dtype, overrides=None):
    from minillm.serve import build_app
    minillm.manual_seed(0)
    tokenizer = load_tokenizer(FIXTURE_TOKENIZER)        # the model's vocabulary is this tokenizer's
    model = build_model(preset, **dict(overrides or {}, vocab_size=tokenizer.vocab_size)).eval()
    block = model.config.block_size
    max_tokens = min(max_tokens, block - prompt_tokens)
    app = build_app(model, tokenizer, preset, dtype=dtype, max_batch=max(clients_list),
                    max_queue=max(clients_list))
    server, port, thread = start_server(app)
    try:
        prompt = [(7 * i + 3) % min(tokenizer.vocab_size, model.config.vocab_size) for i in range(prompt_tokens)]
        run_load(port, 1, prompt, min(8, max_tokens))      # warm up
        rows = [run_load(port, c, prompt, max_tokens) for c in clients_list]
    finally:
        server.should_exit = True
        thread.join(30)
    return model, max_tokens, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt-mini,gpt2-small")
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bf16", "int8"])
    p.add_argument("--threads", type=int, default=None, help="model threads (default $MINILLM_NUM_THREADS or 2)")
    p.add_argument("--quick", action="store_true", help="gpt-tiny, 1 and 2 clients, 8 tokens: checks the bench runs")
    args = p.parse_args(argv)
    threads = args.threads or int(os.environ.get("MINILLM_NUM_THREADS", "2"))
    minillm.set_num_threads(threads)
    if args.quick:
        models, clients, args.max_tokens = ["gpt-tiny"], [1, 2], 8
    else:
        models, clients = args.models.split(","), [int(c) for c in args.clients.split(",")]
    print(f"# minillm serve: {cpu_model()}, {threads} threads, decoder {args.dtype}, prompt {args.prompt_tokens} "
          f"tokens, streamed, greedy")
    for preset in models:
        model, n, rows = bench_model(preset, clients, args.prompt_tokens, args.max_tokens, args.dtype)
        print(f"\n## {preset} ({model.num_params() / 1e6:.1f}M parameters), {n} new tokens per client\n")
        print("| clients | total tokens/s | TTFT median (ms) | TTFT worst (ms) | tokens/s per client |")
        print("|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['clients']} | {r['tokens_per_s']:.1f} | {r['ttft_median_ms']:.0f} | {r['ttft_max_ms']:.0f} "
                  f"| {r['client_rate']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
