"""generation_config.json (HF's sampling defaults of a model folder): read with its types
checked, and turned into the defaults generate()'s callers use."""
import json
import os
import shutil

import pytest

from minillm.models.base import read_generation_config
from minillm.models.gpt import load_pretrained

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gpt2_tiny")


def folder_with(tmp_path, cfg):
    dst = tmp_path / "model"
    shutil.copytree(FIXTURE, dst)
    (dst / "generation_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return str(dst)


def test_fixture_eos_becomes_a_stop_token():
    model = load_pretrained(FIXTURE)
    d = model.generation_defaults()
    assert 319 in d["stop_tokens"] and not d["greedy"]


def test_sampling_fields_and_several_eos_ids(tmp_path):
    folder = folder_with(tmp_path, {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20,
                                    "repetition_penalty": 1.05, "eos_token_id": [300, 301]})
    d = load_pretrained(folder).generation_defaults()
    assert (d["temperature"], d["top_p"], d["top_k"], d["repetition_penalty"], d["greedy"]) == (0.6, 0.9, 20, 1.05, False)
    assert {300, 301} <= set(d["stop_tokens"])


def test_do_sample_false_means_greedy_and_top_k_0_no_limit(tmp_path):
    folder = folder_with(tmp_path, {"do_sample": False, "top_k": 0, "eos_token_id": 5})
    d = load_pretrained(folder).generation_defaults()
    assert d["greedy"] and d["top_k"] is None and 5 in d["stop_tokens"]


def test_no_file_gives_none(tmp_path):
    assert read_generation_config(tmp_path) is None


@pytest.mark.parametrize("field,value", [("temperature", -1), ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5),
                                         ("top_k", -3), ("top_k", 2.5), ("repetition_penalty", 0),
                                         ("eos_token_id", "2"), ("eos_token_id", [1, -2]), ("do_sample", "yes")])
def test_bad_field_is_named_with_the_file(tmp_path, field, value):
    (tmp_path / "generation_config.json").write_text(json.dumps({field: value}), encoding="utf-8")
    with pytest.raises(ValueError, match=f"generation_config.json: {field} must be"):
        read_generation_config(tmp_path)


def test_broken_json_is_named(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"temperature": 0.7,', encoding="utf-8")
    with pytest.raises(ValueError, match="generation_config.json"):
        read_generation_config(tmp_path)
