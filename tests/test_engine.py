"""The continuous-batching engine: sequences added at different steps, with different prompt
lengths and options, produce exactly what generate() gives each alone (greedy, and sampled
with the same seed); slots, the queue, cancellation, stop tokens and the context's end."""
import threading

import numpy as np
import pytest

import minillm
from minillm.engine import Engine
from minillm.generate import generate
from minillm.models import GPT
from minillm.models.gpt import GPTConfig
from minillm.random import Generator


@pytest.fixture(scope="module")
def model():
    minillm.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=48, n_layer=2, n_head=4, n_embd=64)).eval()


def alone(model, prompt, n, **kw):
    return generate(model, [prompt], n, **kw).tolist()[0][len(prompt):]


def run(engine, adds):
    """adds: {step: [(key, prompt, kwargs)]}; returns {key: tokens}, {key: finish reason}."""
    ids, toks, why = {}, {}, {}
    step = 0
    while step <= max(adds) or engine.has_work():
        for key, prompt, kw in adds.get(step, []):
            ids[engine.add(prompt, **kw)] = key
            toks[key] = []
        for ev in engine.step():
            key = ids[ev.seq_id]
            if ev.token is not None:
                toks[key].append(ev.token)
            if ev.finish_reason:
                why[key] = ev.finish_reason
        step += 1
    return toks, why


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_greedy_sequences_joining_late_match_generate_alone(model, weights):
    """Prompts of 1 to 20 tokens: the short ones ride in the step's rows (every prompt does with
    int8 weights), the 20-token one goes through the forward with float32 weights."""
    rng = np.random.default_rng(0)
    prompts = {k: rng.integers(0, 97, size=n).tolist()
               for k, n in (("a", 3), ("b", 11), ("c", 1), ("d", 7), ("e", 20))}
    adds = {0: [("a", prompts["a"], dict(max_new_tokens=12, greedy=True)),
                ("b", prompts["b"], dict(max_new_tokens=5, greedy=True))],
            3: [("c", prompts["c"], dict(max_new_tokens=9, greedy=True)),
                ("e", prompts["e"], dict(max_new_tokens=6, greedy=True))],
            4: [("d", prompts["d"], dict(max_new_tokens=14, greedy=True))]}
    plan = model.decoder(hugepages=False, weights=weights)
    toks, why = run(Engine(model, max_batch=3, decoder=plan), adds)
    n = {"a": 12, "b": 5, "c": 9, "d": 14, "e": 6}
    for k, p in prompts.items():
        assert toks[k] == alone(model, p, n[k], greedy=True, decoder=plan), k
        assert why[k] == "length"


def test_sampled_sequences_match_generate_with_the_same_seed(model):
    kw = dict(temperature=0.9, top_k=20, top_p=0.95)
    adds = {0: [("x", [5, 6, 7], dict(max_new_tokens=10, seed=11, **kw))],
            2: [("y", [8], dict(max_new_tokens=10, seed=12, repetition_penalty=1.3, **kw))]}
    toks, _ = run(Engine(model), adds)
    assert toks["x"] == alone(model, [5, 6, 7], 10, generator=Generator(11), **kw)
    assert toks["y"] == alone(model, [8], 10, generator=Generator(12), repetition_penalty=1.3, **kw)
    assert toks["x"] != alone(model, [5, 6, 7], 10, generator=Generator(99), **kw)


def test_sampler_options_match_generate(model):
    kw = dict(temperature=0.8, top_k=30, min_p=0.05, presence_penalty=0.6, frequency_penalty=0.4,
              logit_bias={3: 5.0, 7: -100.0}, repetition_penalty=1.1)
    toks, _ = run(Engine(model), {0: [("x", [5, 6, 7, 3], dict(max_new_tokens=12, seed=3, **kw))]})
    assert toks["x"] == alone(model, [5, 6, 7, 3], 12, generator=Generator(3), **kw)
    assert 7 not in toks["x"]


def test_slots_queue_and_cancel(model):
    engine = Engine(model, max_batch=2)
    a = engine.add([1, 2], max_new_tokens=30, greedy=True)
    b = engine.add([3], max_new_tokens=30, greedy=True)
    c = engine.add([4], max_new_tokens=3, greedy=True)
    first = engine.step()
    assert {e.seq_id for e in first} == {a, b} and engine.running == 2 and engine.waiting == 1
    engine.cancel(a)
    second = engine.step()
    assert any(e.seq_id == a and e.finish_reason == "cancelled" and e.token is None for e in second)
    third = engine.step()
    assert any(e.seq_id == c for e in third)          # a's slot went to c
    engine.cancel(b)
    engine.cancel(c)
    engine.step()
    assert not engine.has_work()


def test_stop_token_and_the_end_of_the_context(model):
    greedy = alone(model, [9, 9], 6, greedy=True)
    toks, why = run(Engine(model), {0: [("s", [9, 9], dict(max_new_tokens=20, greedy=True,
                                                         stop_tokens=(greedy[3],)))]})
    assert toks["s"] == greedy[:greedy.index(greedy[3]) + 1] and why["s"] == "stop"
    toks, why = run(Engine(model), {0: [("l", list(range(40)), dict(max_new_tokens=100, greedy=True))]})
    assert len(toks["l"]) == 48 - 40 and why["l"] == "length"


@pytest.mark.parametrize("kw,match", [
    (dict(prompt=[], max_new_tokens=3), "non-empty list"),
    (dict(prompt=[1, 97], max_new_tokens=3), r"token 97 is not an id in \[0, 97\)"),
    (dict(prompt=list(range(48)), max_new_tokens=3), "leaves no room in the context of 48"),
    (dict(prompt=[1], max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (dict(prompt=[1], max_new_tokens=10 ** 30 + 0.5), "max_new_tokens must be an int >= 1"),
    (dict(prompt=[1], max_new_tokens=3, temperature=-1), "temperature"),
    (dict(prompt=[1], max_new_tokens=3, seed=-5), "seed must be an int"),
])
def test_bad_requests_are_refused_by_name(model, kw, match):
    with pytest.raises(ValueError, match=match):
        Engine(model).add(**kw)


def test_adding_from_another_thread_while_stepping(model):
    engine = Engine(model, max_batch=4)
    ids = []

    def producer():
        for i in range(6):
            ids.append(engine.add([i + 1], max_new_tokens=4, greedy=True))

    t = threading.Thread(target=producer)
    t.start()
    done = {}
    while t.is_alive() or engine.has_work():
        for ev in engine.step():
            if ev.finish_reason:
                done[ev.seq_id] = ev.finish_reason
    t.join()
    assert sorted(done) == sorted(ids) and set(done.values()) == {"length"}


def tiny_llama():
    from minillm.models.llama import Llama, LlamaConfig
    minillm.manual_seed(1)
    return Llama(LlamaConfig(architecture="Qwen3ForCausalLM", vocab_size=89, block_size=40, n_layer=2, n_head=4,
                             n_kv_head=2, n_embd=48, head_dim=16, d_ff=80, qk_norm=True)).eval()


@pytest.mark.parametrize("family", ["gpt", "llama"])
@pytest.mark.parametrize("weights", ["float32", "bf16", "int8"])
def test_step_rows_gives_each_row_what_it_gets_alone(model, family, weights):
    """Rows at different positions, stepped together, get bitwise the logits of stepping each
    sequence alone (one weight read for all rows changes no row's arithmetic)."""
    from minillm.generate import KVCache
    m = model if family == "gpt" else tiny_llama()
    plan = m.decoder(hugepages=False, weights=weights)
    prompts = [[1, 2, 3, 4, 5], [7], [9, 8, 7]]
    together, alone_caches = [], []
    for p in prompts:
        for caches in (together, alone_caches):
            c = KVCache.for_model(m, 1, capacity=16)
            with minillm.no_grad():
                m(minillm.tensor([p], dtype="int64"), kv_cache=c)
            caches.append(c)
    toks = [11, 12, 13]
    for step in range(3):
        got = plan.step_rows(minillm.tensor(toks, dtype="int64"), together).numpy()
        for b, c in enumerate(alone_caches):
            want = plan.step(minillm.tensor([toks[b]], dtype="int64"), c).numpy()[0]
            np.testing.assert_array_equal(got[b], want)
        toks = [int(t) + 1 for t in got.argmax(axis=1)]
    assert [c.pos for c in together] == [8, 4, 6]


@pytest.mark.parametrize("family", ["gpt", "llama"])
@pytest.mark.parametrize("weights", ["float32", "bf16", "int8"])
def test_a_prompt_as_rows_gives_the_bits_of_stepping_it_in_one_by_one(model, family, weights):
    """Decoder.extend: a prompt's rows in one pass (alone, cut into passes of 5 rows, beside other
    sequences' rows) leave the cache and the logits (the last, or every row's) of stepping its
    ids in one at a time."""
    from minillm.generate import KVCache
    m = model if family == "gpt" else tiny_llama()
    plan = m.decoder(hugepages=False, weights=weights)
    ids = list(range(3, 21))
    one = KVCache.for_model(m, 1, capacity=32)
    steps = [plan.step(minillm.tensor([t], dtype="int64"), one).numpy()[0] for t in ids]
    want = steps[-1]
    for max_rows, floats in ((256, 1 << 24), (5, 1 << 24), (256, 1)):     # passes of all, 5 and 8 rows
        plan.MAX_ROWS, plan.ATTENTION_FLOATS = max_rows, floats
        other, c, third = (KVCache.for_model(m, 1, capacity=32) for _ in range(3))
        got = plan.extend([([7, 8, 9], other), (ids, c), ([4], third)]).numpy()
        np.testing.assert_array_equal(got[1], want, err_msg=f"passes of {max_rows} rows")
        assert (other.pos, c.pos, third.pos) == (3, len(ids), 1)
        for a, b in zip(c.layers, one.layers):
            np.testing.assert_array_equal(a.k.tensor.numpy()[:len(ids)], b.k.tensor.numpy()[:len(ids)])
            np.testing.assert_array_equal(a.v.tensor.numpy()[:len(ids)], b.v.tensor.numpy()[:len(ids)])
        every = plan.extend([(ids, KVCache.for_model(m, 1, capacity=32))], every=True).numpy()
        np.testing.assert_array_equal(every, np.array(steps), err_msg=f"every row, passes of {max_rows} rows")
    # and it is the forward's prompt pass to float32 rounding (float32 weights)
    if weights == "float32":
        with minillm.no_grad():
            logits, _ = m(minillm.tensor([ids], dtype="int64"))
        np.testing.assert_allclose(logits.numpy()[0, -1], want, rtol=1e-4, atol=1e-4)


def test_step_rows_refuses_mismatched_caches(model):
    from minillm.generate import KVCache
    plan = model.decoder(hugepages=False)
    with pytest.raises(ValueError, match="2 tokens for 1 caches"):
        plan.step_rows(minillm.tensor([1, 2], dtype="int64"), [KVCache.for_model(model, 1)])
    with pytest.raises(ValueError, match="batch 1"):
        plan.step_rows(minillm.tensor([1], dtype="int64"), [KVCache.for_model(model, 2)])
    c = KVCache.for_model(model, 1)
    with pytest.raises(ValueError, match="a cache of its own"):
        plan.extend([([1], c), ([2], c)])
    with pytest.raises(ValueError, match="without ids"):
        plan.extend([([], c)])
    assert c.pos == 0
