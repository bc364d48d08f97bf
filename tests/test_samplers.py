"""The samplers of minillm/sampling.py against transformers' logits processors where one exists
(min-p, no-repeat n-gram, single-token sequence bias) and against a NumPy statement of the rule
otherwise (presence/frequency penalties, log-probabilities, stop strings); bad values refused;
and generate() with them: the documented order, several stop ids, seeds, logprobs, stop strings."""
import math
import os

import numpy as np
import pytest

import minillm
from minillm.autograd import no_grad
from minillm.generate import generate
from minillm.models import build_model
from minillm.models.gpt import load_pretrained
from minillm.tokenizers.bpe import BPETokenizer
from minillm.sampling import (StopStrings, apply_logit_bias, apply_presence_frequency_penalty,
                              apply_repetition_penalty, check_sampling_args, min_p_filter, no_repeat_ngram_filter,
                              sample_next, token_logprobs, top_k_filter, top_p_filter)


def hf():
    torch = pytest.importorskip("torch", reason="torch is the reference")
    lp = pytest.importorskip("transformers.generation.logits_process", reason="transformers is the reference")
    return torch, lp


def random_logits(B, V, seed):
    return np.random.default_rng(seed).standard_normal((B, V)).astype(np.float32) * 3


# ------------------------------------------------------------------ min-p
@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 0.9, 1.0])
def test_min_p_matches_transformers_min_p_warper(min_p):
    torch, lp = hf()
    x = random_logits(4, 300, 1)
    got = min_p_filter(minillm.tensor(x), min_p).numpy()
    want = lp.MinPLogitsWarper(min_p)(None, torch.tensor(x)).numpy()
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_array_equal(got[np.isfinite(got)], x[np.isfinite(got)])
    assert np.isfinite(got[np.arange(4), x.argmax(1)]).all()       # the most likely token stays
    if 0 < min_p < 1:
        assert not np.isfinite(got).all()                        # something was cut: the test can fail


def test_min_p_rule_in_numpy():
    x = np.log(np.array([[0.5, 0.2, 0.1, 0.16, 0.04]], dtype=np.float32))
    kept = np.isfinite(min_p_filter(minillm.tensor(x), 0.3).numpy()[0])
    np.testing.assert_array_equal(kept, [True, True, False, True, False])   # p >= 0.3 * 0.5


def test_sample_next_applies_min_p_after_temperature_top_k_top_p_like_transformers():
    torch, lp = hf()
    x = random_logits(3, 200, 2)
    kw = dict(temperature=0.7, top_k=40, top_p=0.9, min_p=0.1)
    chain = [lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(40), lp.TopPLogitsWarper(0.9),
             lp.MinPLogitsWarper(0.1)]
    want = torch.tensor(x)
    for proc in chain:
        want = proc(None, want)
    allowed = np.isfinite(want.numpy())
    assert (allowed.sum(1) < 40).all()
    # draws with many seeds only ever land on tokens transformers' chain keeps
    big = minillm.tensor(np.repeat(x, 500, axis=0))
    ids = sample_next(big, generator=minillm.Generator(3), **kw).numpy().reshape(3, 500)
    for b in range(3):
        assert allowed[b, ids[b]].all()
        assert len(set(ids[b])) > 1
    # and min-p after temperature differs from min-p before it: the order matters here
    before = np.isfinite(min_p_filter(minillm.tensor(x), 0.1).numpy())
    after = np.isfinite(min_p_filter(minillm.tensor(x / 0.7), 0.1).numpy())
    assert (before != after).any()


def test_min_p_sample_counts_follow_the_renormalised_distribution():
    x = np.log(np.array([0.4, 0.3, 0.05, 0.25], dtype=np.float64))
    ids = sample_next(minillm.tensor(np.repeat(x[None], 40000, 0).astype(np.float32)), min_p=0.5,
                      generator=minillm.Generator(9)).numpy()
    counts = np.bincount(ids, minlength=4)
    probs = np.array([0.4, 0.3, 0, 0.25]) / 0.95
    assert counts[2] == 0
    for c, p in zip(counts, probs):
        assert abs(c - 40000 * p) <= 5 * math.sqrt(40000 * p * (1 - p)) + 1


# ------------------------------------------------------------------ presence / frequency
def test_presence_frequency_penalty_is_openais_formula():
    x = random_logits(2, 30, 3)
    generated = [[4, 4, 4, 9, 0], [29, 29]]
    got = apply_presence_frequency_penalty(minillm.tensor(x), generated, presence=0.6, frequency=0.25).numpy()
    want = x.astype(np.float64).copy()
    for b, row in enumerate(generated):
        c = np.bincount(row, minlength=30)
        want[b] -= 0.6 * (c > 0) + 0.25 * c
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got[0, 4] < x[0, 4] - 1.3 and got[0, 5] == x[0, 5]


def test_negative_penalties_encourage_and_an_empty_history_changes_nothing():
    x = random_logits(1, 10, 4)
    got = apply_presence_frequency_penalty(minillm.tensor(x), [[3]], presence=-1.0, frequency=-0.5).numpy()
    assert got[0, 3] == pytest.approx(x[0, 3] + 1.5)
    same = apply_presence_frequency_penalty(minillm.tensor(x), [[]], presence=2.0, frequency=2.0).numpy()
    np.testing.assert_array_equal(same, x)


# ------------------------------------------------------------------ logit bias
def test_logit_bias_matches_transformers_sequence_bias_of_single_tokens():
    torch, lp = hf()
    x = random_logits(3, 60, 5)
    bias = {0: -100.0, 7: 2.5, 59: 100, 13: -0.75}
    got = apply_logit_bias(minillm.tensor(x), bias).numpy()
    proc = lp.SequenceBiasLogitsProcessor(sequence_bias=[[[k], float(v)] for k, v in bias.items()])
    ids = torch.tensor(np.random.default_rng(0).integers(0, 60, (3, 5)))
    want = proc(ids, torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert (got.argmax(1) == 59).all()                           # +100 all but forces the token


@pytest.mark.parametrize("bias, match", [({60: 1.0}, "token id 60 is outside"), ({-1: 1.0}, "token id"),
                                         ({3: 100.5}, "bias of token 3"), ({3: float("nan")}, "bias of token 3"),
                                         ({"3": 1.0}, "token id"), ([(3, 1.0)], "logit_bias must be")])
def test_bad_logit_bias_is_refused(bias, match):
    with pytest.raises(ValueError, match=match):
        apply_logit_bias(minillm.zeros((1, 60)), bias)


# ------------------------------------------------------------------ no-repeat n-gram
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_transformers(n):
    torch, lp = hf()
    rng = np.random.default_rng(n)
    context = rng.integers(0, 6, size=(4, 25))                   # a small alphabet: many repeats
    context[3, :4] = [1, 2, 3, 4]
    context[3, -3:] = [1, 2, 3]
    x = random_logits(4, 6, n)
    got = no_repeat_ngram_filter(minillm.tensor(x), minillm.tensor(context, dtype="int64"), n).numpy()
    want = lp.NoRepeatNGramLogitsProcessor(n)(torch.tensor(context), torch.tensor(x)).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.isinf(got).any()


def test_no_repeat_ngram_rule_in_numpy():
    x = np.zeros((1, 10), dtype=np.float32)
    got = no_repeat_ngram_filter(minillm.tensor(x), [[1, 2, 5, 1, 2, 7, 3, 1, 2]], 3).numpy()[0]
    assert set(np.flatnonzero(np.isinf(got))) == {5, 7}          # 1 2 5 and 1 2 7 exist
    short = no_repeat_ngram_filter(minillm.tensor(x), [[1]], 3).numpy()
    np.testing.assert_array_equal(short, x)                      # too short for a 3-gram


def test_context_ids_outside_the_vocabulary_are_named():
    with pytest.raises(ValueError, match="id 10 in row 0"):
        no_repeat_ngram_filter(minillm.zeros((1, 10)), [[1, 10]], 2)
    with pytest.raises(ValueError, match="id -1 in row 1"):
        apply_presence_frequency_penalty(minillm.zeros((2, 10)), [[1], [-1]], presence=1.0)


# ------------------------------------------------------------------ log-probabilities
def test_token_logprobs_match_torch_log_softmax_and_top_n():
    torch, _ = hf()
    x = random_logits(3, 100, 6)
    x[1, [10, 20, 30]] = 40.0                                    # a three-way tie at the top
    chosen = [5, 20, 99]
    got = token_logprobs(minillm.tensor(x), chosen, n=4)
    ref = torch.log_softmax(torch.tensor(x), -1).numpy()
    for b, (lp_chosen, top) in enumerate(got):
        assert lp_chosen == pytest.approx(ref[b, chosen[b]], abs=1e-5)
        order = sorted(range(100), key=lambda j: (-ref[b, j], j))[:4]
        assert [j for j, _ in top] == order
        np.testing.assert_allclose([v for _, v in top], ref[b, order], atol=1e-5)
    assert [j for j, _ in got[1][1][:3]] == [10, 20, 30]


def test_token_logprobs_with_n_zero_and_bad_n():
    lp, top = token_logprobs(minillm.tensor(np.zeros((1, 4), np.float32)), [2], 0)[0]
    assert top == [] and lp == pytest.approx(math.log(0.25))
    for bad in (-1, 5, 1.5, True):
        with pytest.raises(ValueError, match="logprobs"):
            token_logprobs(minillm.zeros((1, 4)), [0], bad)
    with pytest.raises(ValueError, match="chosen id 4"):
        token_logprobs(minillm.zeros((1, 4)), [4], 1)


# ------------------------------------------------------------------ stop strings
def stream(stops, pieces):
    """Push the growing text piece by piece; (what was shown, the StopStrings)."""
    s = StopStrings(stops)
    text, shown = "", ""
    for p in pieces:
        text += p
        shown += s.push(text)
        if s.stopped:
            break
    else:
        shown += s.flush()
    return shown, s


def test_stop_string_split_across_tokens_is_found_and_excluded():
    shown, s = stream(["User:"], ["Hello", " Us", "er", ": more", " text"])
    assert s.stopped and shown == "Hello " and s.text == "Hello " and s.keep == 6


def test_text_that_may_start_a_stop_string_is_held_back_until_known():
    s = StopStrings(["User:"])
    assert s.push("Hello Us") == "Hello "                       # "Us" may begin "User:"
    assert s.push("Hello Usual") == "Usual"                     # it did not
    assert s.push("Hello Usual U") == " "
    assert s.flush() == "U" and not s.stopped                   # generation ended: nothing to wait for


def test_earliest_of_several_stop_strings_wins():
    shown, s = stream(["\n\n", "END", "x\n"], ["a", "bx", "\n", "\nEND"])
    assert shown == "ab" and s.keep == 2                         # "x\n" starts before "\n\n"


def test_stop_string_inside_one_token_and_at_the_start():
    shown, s = stream(["###"], ["abc###def"])
    assert shown == "abc"
    shown, s = stream(["###"], ["###"])
    assert shown == "" and s.stopped and s.keep == 0


def test_no_stop_string_streams_everything():
    pieces = ["The ", "quick", " brown", " fox"]
    shown, s = stream(["zzz"], pieces)
    assert shown == "".join(pieces) and not s.stopped


def test_stop_strings_match_a_brute_force_rule():
    rng = np.random.default_rng(7)
    stops = ["aba", "bb", "cab"]
    for _ in range(300):
        text = "".join(rng.choice(list("abc"), size=int(rng.integers(1, 15))))
        cuts = sorted(set(rng.integers(0, len(text) + 1, size=4).tolist()) | {len(text)})
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts) if j > i]
        shown, s = stream(stops, pieces)
        hits = [i for i in range(len(text)) if any(text.startswith(t, i) for t in stops)]
        assert shown == (text[:hits[0]] if hits else text), (text, pieces)
        # nothing shown on the way is ever withdrawn, and nothing shown contains a stop string
        assert not any(t in shown for t in stops)


def test_incomplete_utf8_is_held_back_and_bytes_work_too():
    s = StopStrings(["!"])
    assert s.push("caf\ufffd") == "caf"                         # a multi-byte character cut by a token
    assert s.push("café") == "é"
    b = StopStrings(["é!"])
    out = b.push("caf\xc3".encode("latin-1"))
    assert out == b"caf" and b.push("café!".encode()) == b"" and b.stopped and b.keep == 3


def test_text_that_changes_what_was_shown_is_refused():
    s = StopStrings(["x"])
    s.push("abc")
    with pytest.raises(ValueError, match="no longer starts with"):
        s.push("abd")


@pytest.mark.parametrize("bad", [[""], [3], [None]])
def test_bad_stop_strings_are_refused(bad):
    with pytest.raises(ValueError, match="stop strings"):
        StopStrings(bad)


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("kw", [dict(min_p=-0.1), dict(min_p=1.5), dict(min_p="0.1"), dict(min_p=True),
                                dict(presence_penalty=2.5), dict(presence_penalty=float("nan")),
                                dict(frequency_penalty=-3), dict(frequency_penalty=None),
                                dict(no_repeat_ngram_size=-1), dict(no_repeat_ngram_size=2.0),
                                dict(logit_bias={1: 101})])
def test_bad_values_name_the_option_and_value(kw):
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=name.split("_size")[0]) as e:
        check_sampling_args(**kw)
    shown = repr(next(iter(value.values()))) if isinstance(value, dict) else repr(value)
    assert shown in str(e.value)


def test_functions_leave_their_input_unchanged():
    x = random_logits(2, 20, 8)
    t = minillm.tensor(x)
    for out in (min_p_filter(t, 0.5), apply_presence_frequency_penalty(t, [[1], [2]], 1.0, 1.0),
                apply_logit_bias(t, {1: 5.0}), no_repeat_ngram_filter(t, [[1, 1], [2, 2]], 1),
                top_k_filter(t, 3), top_p_filter(t, 0.5)):
        assert not np.array_equal(out.numpy(), x)
    np.testing.assert_array_equal(t.numpy(), x)


# ------------------------------------------------------------------ wired into generate()
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gpt2_tiny")


def tiny_gpt(seed=0):
    model = build_model("gpt-tiny", generator=minillm.Generator(seed), vocab_size=97, block_size=32, n_layer=2,
                        n_head=4, n_embd=32)
    with no_grad():                              # spread logits: no near-ties for argmax
        for p in model.parameters():
            if p.ndim == 2:
                p *= 5.0
    return model


def reference_loop(model, prompt, steps, seed, **kw):
    """generate() restated with the pure functions, full recomputation each step and the
    documented order: logit bias, repetition, presence/frequency, no-repeat n-gram, then
    sample_next (temperature, top-k, top-p, min-p)."""
    g = minillm.Generator(seed)
    seq = [list(r) for r in prompt]
    T = len(seq[0])
    for _ in range(steps):
        with no_grad():
            logits, _ = model(minillm.tensor(seq, dtype="int64"))
        x = minillm.tensor(logits.numpy()[:, -1, :].copy())
        if kw.get("logit_bias"):
            x = apply_logit_bias(x, kw["logit_bias"])
        if kw.get("repetition_penalty", 1.0) != 1.0:
            x = apply_repetition_penalty(x, seq, kw["repetition_penalty"])
        x = apply_presence_frequency_penalty(x, [r[T:] for r in seq], kw.get("presence_penalty", 0.0),
                                             kw.get("frequency_penalty", 0.0))
        x = no_repeat_ngram_filter(x, seq, kw.get("no_repeat_ngram_size", 0))
        nxt = sample_next(x, kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p"), generator=g,
                          min_p=kw.get("min_p"))
        for r, t in zip(seq, nxt.tolist()):
            r.append(t)
    return np.array(seq)


ALL_ON = dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.05, repetition_penalty=1.2, presence_penalty=0.5,
              frequency_penalty=0.3, no_repeat_ngram_size=3, logit_bias={3: 2.0, 7: -100, 11: 1.5})


@pytest.mark.parametrize("fast", [True, False])
def test_generate_applies_every_option_in_the_documented_order(fast):
    model = tiny_gpt()
    prompt = [[1, 2, 3, 4], [9, 8, 7, 6]]
    got = generate(model, prompt, 20, generator=minillm.Generator(5), fast=fast, **ALL_ON).numpy()
    want = reference_loop(model, prompt, 20, 5, **ALL_ON)
    np.testing.assert_array_equal(got, want)
    assert 7 not in got[:, 4:]                                   # -100 bans it in practice
    for r in got:                                                # no new token repeats a 3-gram
        for end in range(4, len(r)):
            assert tuple(r[end - 2:end + 1]) not in {tuple(r[i:i + 3]) for i in range(end - 2)}
    plain = generate(model, prompt, 20, generator=minillm.Generator(5), temperature=0.9, top_k=50,
                     top_p=0.95).numpy()
    assert (plain != got).any()                                  # the options changed something


def test_greedy_with_bias_penalty_and_ngram_matches_transformers_generate():
    torch = pytest.importorskip("torch", reason="torch is the reference")
    transformers = pytest.importorskip("transformers", reason="transformers is the reference")
    ref = transformers.GPT2LMHeadModel.from_pretrained(FIXTURE).eval()
    model = load_pretrained(FIXTURE)
    prompt = [5, 17, 17, 40, 3]
    bias = {40: -5.0, 12: 3.0, 100: 1.0}
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=25, do_sample=False, repetition_penalty=1.3,
                            no_repeat_ngram_size=2, sequence_bias={(k,): v for k, v in bias.items()},
                            pad_token_id=0, eos_token_id=None)[0].tolist()
    got = generate(model, [prompt], 25, greedy=True, repetition_penalty=1.3, no_repeat_ngram_size=2,
                   logit_bias=bias).tolist()[0]
    assert got == want
    assert generate(model, [prompt], 25, greedy=True, repetition_penalty=1.3).tolist()[0] != want


def test_presence_and_frequency_count_generated_tokens_not_the_prompt():
    model = tiny_gpt(1)
    prompt = [[5, 5, 5, 5, 6]]
    got = generate(model, prompt, 15, greedy=True, presence_penalty=1.5, frequency_penalty=2.0).numpy()
    seq = list(prompt[0])
    for _ in range(15):
        with no_grad():
            logits, _ = model(minillm.tensor([seq], dtype="int64"))
        x = logits.numpy()[0, -1].astype(np.float64)
        c = np.bincount(seq[5:], minlength=97)
        seq.append(int(np.argmax(x - 1.5 * (c > 0) - 2.0 * c)))
    np.testing.assert_array_equal(got[0], seq)
    free = generate(model, prompt, 15, greedy=True).numpy()
    assert (free != got).any()


def test_several_stop_ids_end_each_row_at_its_own():
    model = tiny_gpt()
    prompts = [[5, 6, 7], [8, 9, 10]]
    free = generate(model, prompts, 12, greedy=True).numpy()
    a, b = int(free[0, 5]), int(free[1, 6])                      # third new token of row 0, fourth of row 1
    out = generate(model, prompts, 12, greedy=True, stop_tokens=[a, b]).numpy()
    for r, stop_set in ((0, {a, b}), (1, {a, b})):
        new = list(free[r, 3:])
        first = min(new.index(s) for s in stop_set if s in new)
        np.testing.assert_array_equal(out[r, :3 + first + 1], free[r, :3 + first + 1])
        assert (out[r, 3 + first:] == free[r, 3 + first]).all()
    assert out.shape[1] <= 3 + 4
    one = generate(model, prompts[:1], 12, greedy=True, stop_tokens=np.int64(a)).numpy()   # a single id
    assert one[0, -1] == a and one.shape[1] <= 3 + 3


def test_seed_gives_the_same_tokens_and_another_seed_others():
    model = tiny_gpt()
    run = lambda seed: generate(model, [[1, 2, 3]] * 2, 30, generator=minillm.Generator(seed), **ALL_ON).numpy()
    np.testing.assert_array_equal(run(11), run(11))
    assert (run(11) != run(12)).any()


def test_logprobs_are_the_models_distribution_and_leave_the_ids_unchanged():
    torch = pytest.importorskip("torch", reason="torch is the reference")
    transformers = pytest.importorskip("transformers", reason="transformers is the reference")
    ref = transformers.GPT2LMHeadModel.from_pretrained(FIXTURE).eval()
    model = load_pretrained(FIXTURE)
    prompt = [5, 17, 17, 40, 3]
    kw = dict(greedy=True, logit_bias={12: 4.0})
    ids, steps = generate(model, [prompt], 10, logprobs=3, **kw)
    assert ids.tolist() == generate(model, [prompt], 10, **kw).tolist()
    with torch.no_grad():
        raw = ref(torch.tensor(ids.tolist())).logits[0, len(prompt) - 1:-1]       # (10, V) the model's logits
    lp = torch.log_softmax(raw, -1).numpy()
    assert len(steps) == 1 and len(steps[0]) == 10
    for t, (chosen, top) in enumerate(steps[0]):
        tok = ids.tolist()[0][len(prompt) + t]
        assert chosen == pytest.approx(lp[t, tok], abs=1e-4)
        order = np.argsort(-lp[t], kind="stable")[:3]
        assert [j for j, _ in top] == order.tolist()
        np.testing.assert_allclose([v for _, v in top], lp[t, order], atol=1e-4)
    # the bias moved the choice at least once, and the logprobs still report the raw distribution
    assert any(top[0][0] != ids.tolist()[0][len(prompt) + t] for t, (_, top) in enumerate(steps[0]))


def test_logprobs_stop_with_each_row():
    model = tiny_gpt()
    free = generate(model, [[5, 6, 7], [8, 9, 10]], 8, greedy=True).numpy()
    stop = int(free[0, 4])                                       # row 0's second new token
    ids, steps = generate(model, [[5, 6, 7], [8, 9, 10]], 8, greedy=True, stop_tokens=[stop], logprobs=0)
    assert len(steps[0]) == list(free[0, 3:]).index(stop) + 1
    assert len(steps[1]) == ids.shape[1] - 3 if stop in free[1, 3:] else len(steps[1]) == 8
    assert all(top == [] for _, top in steps[0])


def letters(ids):
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_end_a_row_when_they_span_tokens():
    model = tiny_gpt()
    free = generate(model, [[5, 6, 7]], 12, greedy=True).numpy()[0]
    text = letters(free[3:])
    stop = text[3:5]                                             # the 4th and 5th new tokens' letters
    cut = text.index(stop)
    out = generate(model, [[5, 6, 7]], 12, greedy=True, stop_strings=[stop], decode=letters).numpy()[0]
    assert len(out) == 3 + cut + 2                               # ends with the token completing it
    np.testing.assert_array_equal(out, free[:len(out)])
    keep, stopped = StopStrings([stop]).find(letters(out[3:]))
    assert stopped and keep == cut


@pytest.mark.parametrize("kw, name", [(dict(min_p=2.0), "min_p"), (dict(presence_penalty=-2.5), "presence_penalty"),
                                      (dict(frequency_penalty="1"), "frequency_penalty"),
                                      (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
                                      (dict(logit_bias={97: 1.0}), "logit_bias"),
                                      (dict(logit_bias={1: -101}), "logit_bias"),
                                      (dict(logprobs=-1), "logprobs"), (dict(logprobs=98), "logprobs"),
                                      (dict(stop_tokens=[1, -3]), "stop_tokens"),
                                      (dict(stop_tokens="eos"), "stop_tokens"),
                                      (dict(stop_strings=["x"]), "decode"),
                                      (dict(stop_strings=[""], decode=letters), "stop strings")])
def test_generate_refuses_bad_sampler_options_by_name(kw, name):
    with pytest.raises(ValueError, match=name):
        generate(tiny_gpt(), [[1, 2]], 3, **kw)


def test_stop_string_with_the_gpt2_tokenizer_spans_tokens_and_is_cut_from_the_text():
    tok = BPETokenizer.from_tokenizer_json(os.path.join(FIXTURE, "tokenizer.json"))
    model = load_pretrained(FIXTURE)
    prompt = tok.encode("Hello world")
    free = generate(model, [prompt], 30, temperature=1.2, generator=minillm.Generator(2)).tolist()[0][len(prompt):]
    pieces = [tok.decode([i]) for i in free]
    # a stop string made of the end of one token's text and the start of the next one's
    k = next(k for k in range(3, len(pieces) - 1) if pieces[k] and pieces[k + 1] and len(pieces[k]) > 1
             and "\ufffd" not in pieces[k] + pieces[k + 1])
    stop = pieces[k][-1] + pieces[k + 1][:1]
    text = tok.decode(free)
    cut = text.index(stop)
    out = generate(model, [prompt], 30, temperature=1.2, generator=minillm.Generator(2), stop_strings=[stop],
                   decode=tok.decode).tolist()[0][len(prompt):]
    assert out == free[:len(out)] and len(out) < len(free)
    keep, stopped = StopStrings([stop]).find(tok.decode(out))
    assert stopped and tok.decode(out)[:keep] == text[:cut]
    # streamed piece by piece, nothing past the cut is ever shown
    s, shown = StopStrings([stop]), ""
    for n in range(1, len(out) + 1):
        shown += s.push(tok.decode(out[:n]))
    assert s.stopped and shown == text[:cut]
