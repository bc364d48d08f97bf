"""Chat templates: a model's conversation format, rendered as HF transformers renders it.

A model folder ships its template as Jinja source: tokenizer_config.json's "chat_template"
(a string, or a list of {"name", "template"}), or the file chat_template.jinja. It is
rendered with jinja2 (the optional extra `minillm[chat]`; `import minillm` does not need it)
in the environment transformers' `apply_chat_template` uses: a sandbox, trim_blocks and
lstrip_blocks, the loop-control extension, a `tojson` filter that keeps non-ASCII text,
`raise_exception(message)`, `strftime_now(format)`, and the `{% generation %}` block (which
only marks the assistant's text there, so it renders its body).

    from minillm.chat import ChatTemplate
    chat = ChatTemplate.from_folder("Qwen2.5-0.5B-Instruct/")
    prompt = chat.render([{"role": "user", "content": "Hi!"}], add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
"""
import datetime
import json
import os

from .utils import parse_json, read_text

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                      "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """The template refused the conversation (raise_exception), or could not be compiled."""


def _jinja2():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        raise ImportError("chat templates need jinja2: pip install 'minillm[chat]' "
                          "(or pip install 'jinja2>=3.1.6')") from None
    return jinja2


def token_text(value):
    """A special token as tokenizer_config.json spells it: "text" or {"content": "text", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _environment():
    jinja2 = _jinja2()

    class GenerationBlock(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %}: renders its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    def raise_exception(message):
        raise ChatTemplateError(f"chat template: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


class ChatTemplate:
    """A compiled chat template with the special tokens it may use (bos_token, eos_token...)."""

    def __init__(self, source, special_tokens=None, name="chat_template"):
        if not isinstance(source, str):
            raise ChatTemplateError(f"{name}: a chat template is Jinja source text, got "
                                    f"{type(source).__name__}")
        self.source = source
        self.name = name
        self.special_tokens = dict(special_tokens or {})
        jinja2 = _jinja2()
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(f"{name} line {e.lineno}: bad Jinja ({e.message})") from None

    @classmethod
    def from_folder(cls, folder, name=None):
        """The template of a model folder: chat_template.jinja, else tokenizer_config.json's
        "chat_template" (the one called `name`, or "default", when it lists several); the
        special tokens come from tokenizer_config.json. ValueError when there is none."""
        cfg_path = os.path.join(folder, "tokenizer_config.json")
        config = {}
        if os.path.exists(cfg_path):
            config = parse_json(read_text(cfg_path), cfg_path)
            if not isinstance(config, dict):
                raise ValueError(f"{cfg_path}: expected a JSON object")
        jinja_path = os.path.join(folder, "chat_template.jinja")
        jinja = read_text(jinja_path) if os.path.exists(jinja_path) else None
        template = cls.from_config(config, jinja, cfg_path, jinja_path, name)
        if template is None:
            raise ValueError(f"{folder}: no chat template (neither chat_template.jinja nor "
                             f"\"chat_template\" in tokenizer_config.json)")
        return template

    @classmethod
    def from_config(cls, config, jinja=None, config_path="tokenizer_config.json",
                    jinja_path="chat_template.jinja", name=None):
        """The template of a parsed tokenizer_config.json (dict) and the text of
        chat_template.jinja (or None), as from_folder chooses it; None when there is none."""
        specials = {k: token_text(config.get(k)) for k in SPECIAL_TOKEN_KEYS
                    if token_text(config.get(k)) is not None}
        if name is None and jinja is not None:
            return cls(jinja, specials, jinja_path)
        source = config.get("chat_template")
        where = f"{config_path}: chat_template"
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            want = name or "default"
            if want not in named:
                raise ValueError(f"{where} has no template named {want!r} (it has "
                                 f"{sorted(str(k) for k in named)})")
            source, where = named[want], f"{where} {want!r}"
        elif name is not None:
            raise ValueError(f"{where}: one template, not a list holding {name!r}")
        return None if source is None else cls(source, specials, where)

    def render(self, messages, add_generation_prompt=False, tools=None, documents=None,
               **kwargs):
        """The conversation as the model's prompt text, as transformers'
        `apply_chat_template(messages, tokenize=False, ...)` renders it.

        messages: list of {"role": str, "content": ...} dicts. add_generation_prompt: end with
        the opening of the assistant's turn. tools/documents: lists of dicts (JSON schemas) for
        the templates that use them. Other keywords reach the template as variables (they
        override the special tokens of the same name).
        """
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise ChatTemplateError(f"messages must be a list of {{'role': ..., 'content': ...}} "
                                    f"dicts, got {messages!r:.100}")
        jinja2 = _jinja2()
        variables = {**self.special_tokens, **kwargs}
        try:
            return self._template.render(messages=list(messages), tools=tools,
                                         documents=documents,
                                         add_generation_prompt=add_generation_prompt,
                                         **variables)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{self.name}: {e}") from None


def apply_chat_template(source, messages, add_generation_prompt=False, **kwargs):
    """Render `messages` with the Jinja template `source` (see ChatTemplate.render)."""
    return ChatTemplate(source).render(messages, add_generation_prompt=add_generation_prompt,
                                       **kwargs)


# ---------------------------------------------------------------------- a conversation to a prompt
FALLBACK_STOP = ("\nuser:",)


def render_conversation(tokenizer, messages):
    """messages [{"role", "content": str}] -> (prompt, specials, extra_stop) for a model to
    continue as the assistant. With the model's chat template (tokenizer.chat_template, as
    HFTokenizer reads it) the prompt is the rendered text with the generation prompt added,
    specials True (the special tokens it holds are encoded as such). Without one (GPT-2,
    minillm's own BPE, a base model) the fallback is one line per message, "<role>: <content>",
    and a last line "assistant:"; extra_stop then ends a reply where the model starts a new
    user turn ("\nuser:")."""
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is not None and getattr(tokenizer, "chat_template", True) is not None:
        try:
            out = apply(messages, add_generation_prompt=True, tokenize=False)     # HF's signature
        except TypeError:
            out = apply(messages, add_generation_prompt=True)
        if isinstance(out, str):
            return out, True, ()
        return [int(t) for t in out], True, ()
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return text, False, FALLBACK_STOP


def encode_prompt(tokenizer, text, rendered):
    """Token ids of a prompt. rendered: text from render_conversation's chat template, whose
    special tokens (BOS included, where the template writes it) are encoded as such and
    nothing is added around it, as transformers' apply_chat_template(tokenize=True) does;
    otherwise plain text, encoded as the tokenizer does by default (an HF tokenizer adds the
    BOS its post-processor adds; minillm's BPE reads no special token from user text)."""
    import inspect
    params = inspect.signature(tokenizer.encode).parameters
    if "allowed_special" in params:
        return list(tokenizer.encode(text, allowed_special="all" if rendered else "none"))
    if "add_special_tokens" in params:
        return list(tokenizer.encode(text, add_special_tokens=not rendered))
    return list(tokenizer.encode(text))
