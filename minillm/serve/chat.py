"""A conversation to prompt text: the model's chat template, or a plain fallback.

When the tokenizer has apply_chat_template (the template shipped in the model's
tokenizer_config.json / chat_template.jinja), it renders the messages with the generation
prompt added; its output may hold the template's special tokens, which are then encoded as
such. Without one (GPT-2, minillm's own BPE), the fallback is one line per message,
"<role>: <content>", and a last line "assistant:" for the model to continue; a reply then
also ends where the model starts a new user turn ("\\nuser:").
"""

__all__ = ["render_chat", "FALLBACK_STOP"]

FALLBACK_STOP = ("\nuser:",)


def render_chat(tokenizer, messages):
    """messages [{"role", "content": str}] -> (prompt, specials, extra_stop): prompt is text
    (or a list of ids, if the template returns ids), specials says whether special tokens in
    it are read as such, extra_stop the stop strings the format adds."""
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is not None:
        try:
            out = apply(messages, add_generation_prompt=True, tokenize=False)     # HF's signature
        except TypeError:
            out = apply(messages, add_generation_prompt=True)
        if isinstance(out, str):
            return out, True, ()
        return [int(t) for t in out], True, ()
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return text, False, FALLBACK_STOP
