"""Repetition penalty (generation_config.json's repetition_penalty): the same logits as
transformers' RepetitionPenaltyLogitsProcessor, the same greedy continuation as
transformers' generate on the GPT-2 fixture, bad values refused."""
import os

import numpy as np
import pytest

import minillm
from minillm.generate import generate
from minillm.models.gpt import load_pretrained
from minillm.sampling import apply_repetition_penalty, check_sampling_args

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gpt2_tiny")


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_penalty_matches_transformers_logits_processor(penalty):
    torch = pytest.importorskip("torch", reason="torch is the reference")
    lp = pytest.importorskip("transformers.generation.logits_process", reason="transformers is the reference")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    context = rng.integers(0, 50, size=(3, 12))
    context[1, :] = 7                                   # one id many times: penalised once
    got = apply_repetition_penalty(minillm.tensor(logits), minillm.tensor(context, dtype="int64"), penalty)
    want = lp.RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor(context), torch.tensor(logits))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=0)
    # ids not in the context keep their logits; the input is not changed
    untouched = np.setdiff1d(np.arange(50), context[0])
    np.testing.assert_array_equal(got.numpy()[0, untouched], logits[0, untouched])
    assert not np.array_equal(got.numpy(), logits)


def test_greedy_with_penalty_matches_transformers_generate():
    torch = pytest.importorskip("torch", reason="torch is the reference")
    transformers = pytest.importorskip("transformers", reason="transformers is the reference")
    ref = transformers.GPT2LMHeadModel.from_pretrained(FIXTURE).eval()
    model = load_pretrained(FIXTURE)
    prompt = [5, 17, 17, 40, 3]
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, repetition_penalty=1.8,
                            pad_token_id=0)[0].tolist()
    for fast in (True, False):
        got = generate(model, [prompt], 20, greedy=True, repetition_penalty=1.8, fast=fast).tolist()[0]
        assert got == want
    # and the penalty changes something here, so the comparison can fail
    assert generate(model, [prompt], 20, greedy=True).tolist()[0] != want


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1.2"])
def test_bad_penalty_is_refused(bad):
    with pytest.raises(ValueError, match="repetition_penalty"):
        check_sampling_args(repetition_penalty=bad)


def test_context_id_outside_the_vocabulary_is_named():
    with pytest.raises(ValueError, match="id 50 in row 0"):
        apply_repetition_penalty(minillm.zeros((1, 50)), [[3, 50]], 1.2)
