"""minillm.chat against transformers' apply_chat_template(..., tokenize=False): a ChatML (Qwen)
template, a Llama-3 one and a Llama-2 one, written into tokenizer_config.json here from the
published formats, must render the same text for the same conversations."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jinja2")

from minillm.chat import ChatTemplate, ChatTemplateError, apply_chat_template  # noqa: E402
from tokenizer_families import build_family  # noqa: E402

# ChatML as Qwen2.5 writes it: a default system turn, a tools block (JSON schemas in
# <tools></tools>), tool calls and tool responses.
CHATML = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == 'assistant' %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.function.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.function.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == 'tool' %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

# Llama 3.1/3.2's layout: BOS, a system header with the knowledge and today's dates
# (strftime_now), each turn between header ids and <|eot_id|>, content trimmed.
LLAMA3 = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{%- if tools is not none %}\n"
    "    {{- \"Environment: ipython\\n\" }}\n"
    "{%- endif %}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{%- if tools is not none %}\n"
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n"
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role in ['user', 'assistant', 'system'] %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('unknown role ' + message.role) }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n")

# Llama 2 chat: [INST] ... [/INST] per user turn, <<SYS>> folded into the first one, BOS/EOS
# around each exchange, roles must alternate.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")

TEMPLATES = {
    "chatml": ("qwen2", CHATML, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "llama3": ("llama3", LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "llama2": ("llama2", LLAMA2, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "  You are terse.  "}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": " 4 "},
     {"role": "user", "content": "Ünïcödé, 東京, emoji 🙂\nand a newline\t tab"}],
    [{"role": "system", "content": "Sys"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}],
]


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def folder(request, tmp_path_factory):
    family, template, specials = TEMPLATES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    build_family(family, str(path))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
              "model_max_length": 4096, **specials}
    if request.param == "llama2":      # one spelling of the tokens as AddedToken objects
        config["eos_token"] = {"__type": "AddedToken", "content": "</s>", "lstrip": False,
                               "normalized": False, "rstrip": False, "single_word": False}
    with open(path / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False)
    return request.param, str(path)


@pytest.fixture(scope="module")
def hf_tokenizer(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(folder[1])


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_equals_transformers(folder, hf_tokenizer, add_generation_prompt):
    name, path = folder
    ours = ChatTemplate.from_folder(path)
    for messages in CONVERSATIONS:
        want = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=add_generation_prompt)
        assert ours.render(messages, add_generation_prompt=add_generation_prompt) == want


@pytest.mark.parametrize("folder", [n for n in sorted(TEMPLATES) if n != "llama2"], indirect=True)
def test_tools_render_equals_transformers(folder, hf_tokenizer):
    """(The Llama 2 template has no tools.)"""
    name, path = folder
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city, °C",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    messages = [{"role": "user", "content": "Weather in Zürich?"}]
    if name == "chatml":
        messages += [{"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Zürich"}}}]},
            {"role": "tool", "content": "21"}, {"role": "tool", "content": "sunny"}]
    want = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                            add_generation_prompt=True)
    assert ChatTemplate.from_folder(path).render(messages, tools=tools,
                                                 add_generation_prompt=True) == want


def test_rendered_prompt_tokenizes_like_transformers(folder, hf_tokenizer):
    from minillm.tokenizers import load_tokenizer
    name, path = folder
    messages = CONVERSATIONS[2]
    prompt = ChatTemplate.from_folder(path).render(messages, add_generation_prompt=True)
    want = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(want, dict) or hasattr(want, "keys"):
        want = want["input_ids"]
    assert load_tokenizer(path).encode(prompt, add_special_tokens=False) == list(want)


def test_tokenizer_apply_chat_template_equals_transformers(folder, hf_tokenizer, tmp_path):
    from minillm.tokenizers import load_tokenizer
    name, path = folder
    tok = load_tokenizer(path)
    messages = CONVERSATIONS[1]
    for tokenize in (False, True):
        want = hf_tokenizer.apply_chat_template(messages, tokenize=tokenize,
                                                add_generation_prompt=True)
        if tokenize and hasattr(want, "keys"):
            want = want["input_ids"]
        got = tok.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=True)
        assert got == (list(want) if tokenize else want)
    copy = load_tokenizer(tok.save(str(tmp_path / "copy")))
    assert copy.apply_chat_template(messages, tokenize=False) == \
        tok.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("folder", ["llama2", "llama3"], indirect=True)
def test_raise_exception_is_a_clear_error(folder):
    """(The ChatML template raises nothing.)"""
    name, path = folder
    bad = {"llama2": [{"role": "assistant", "content": "first"}],
           "llama3": [{"role": "robot", "content": "x"}]}[name]
    with pytest.raises(ChatTemplateError, match="chat template: "):
        ChatTemplate.from_folder(path).render(bad)


def test_template_variables_and_generation_block():
    source = ("{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}"
              "{% endfor %}{{ bos_token }}{{ extra }}{{ {'k': 'é'} | tojson }}"
              "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}")
    out = apply_chat_template(source, [{"role": "user", "content": "x"}], bos_token="<s>",
                              extra="!")
    assert out == '[x]<s>!{"k": "é"}01'


def test_bad_templates_and_folders(tmp_path):
    with pytest.raises(ChatTemplateError, match="line 1: bad Jinja"):
        ChatTemplate("{% for %}")
    with pytest.raises(ValueError, match="no chat template"):
        ChatTemplate.from_folder(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "default", "template": "A{{ messages[0].content }}"},
                           {"name": "tool_use", "template": "T"}]}))
    assert ChatTemplate.from_folder(str(tmp_path)).render([{"role": "user", "content": "b"}]) == "Ab"
    assert ChatTemplate.from_folder(str(tmp_path), "tool_use").render([]) == "T"
    with pytest.raises(ValueError, match="no template named 'other'"):
        ChatTemplate.from_folder(str(tmp_path), "other")
    (tmp_path / "chat_template.jinja").write_text("J{{ messages | length }}")
    assert ChatTemplate.from_folder(str(tmp_path)).render([]) == "J0"
    with pytest.raises(ChatTemplateError, match="messages must be a list"):
        ChatTemplate("x").render("hello")
    # the sandbox: templates cannot reach Python internals
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render([])


def test_import_minillm_does_not_need_jinja2():
    code = ("import sys; sys.modules['jinja2'] = None\n"
            "import minillm, minillm.chat, minillm.tokenizers\n"
            "try:\n"
            "    minillm.chat.ChatTemplate('x')\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install 'minillm[chat]'" in out.stdout


def test_tokenizer_without_template_says_so(tmp_path):
    from minillm.tokenizers import load_tokenizer
    build_family("llama3", str(tmp_path))
    tok = load_tokenizer(str(tmp_path))
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
