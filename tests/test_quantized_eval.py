"""Quality of narrow weights, measured: a small GPT trained here on tests/data/sample.txt,
evaluated over the same validation windows through its forward and through decode plans with
float32, bf16 and int8 weights (metrics.evaluate(decoder=...)). The float32 plan gives the
forward's loss; bf16 moves the validation bits per byte by less than 0.5% relative, int8
(weights and, per group, activations) by less than 1%."""
import os

import numpy as np
import pytest

import minillm
from minillm import data, metrics
from minillm.models import GPT
from minillm.models.gpt import GPTConfig
from minillm.tokenizers import BPETokenizer

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample.txt")
BLOCK = 32


@pytest.fixture(scope="module")
def trained():
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    tok = BPETokenizer().train(text, 300)
    ids = np.array(tok.encode(text), dtype=np.int64)
    cut = int(len(ids) * 0.9)
    train, val = ids[:cut], ids[cut:]
    minillm.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=4, n_embd=64))
    opt = model.configure_optimizers(0.1, 3e-3)
    batches = data.TokenBatches(train, 16, BLOCK, seed=1)
    for _ in range(200):
        x, y = batches.next()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, val, data.token_byte_lengths(tok), float(loss.item())


def bpb(model, val, lengths, weights=None):
    plan = None if weights is None else model.decoder(hugepages=False, weights=weights)
    return metrics.evaluate(model, val, 8, BLOCK, lengths, max_batches=4, decoder=plan)["bpb"]


def test_the_model_learned_something(trained):
    model, val, lengths, last_loss = trained
    assert last_loss < np.log(model.config.vocab_size) - 1.0


def test_float32_plan_gives_the_forwards_loss(trained):
    model, val, lengths, _ = trained
    assert bpb(model, val, lengths, "float32") == pytest.approx(bpb(model, val, lengths), rel=1e-5)


@pytest.mark.parametrize("weights,limit", [("bf16", 0.005), ("int8", 0.01)])
def test_narrow_weights_move_bits_per_byte_little(trained, weights, limit):
    model, val, lengths, _ = trained
    base = bpb(model, val, lengths)
    got = bpb(model, val, lengths, weights)
    assert got != base                       # the narrow weights are really used
    assert abs(got - base) / base < limit, (weights, base, got)
