"""A conversation with a model: what `minillm chat` runs, as a Python API.

    session = ChatSession(model, model.tokenizer, system="Answer briefly.")
    reply = session.send("What is the capital of France?", stream=print)
    reply.text, reply.tokens, reply.tokens_per_second
    session.send("And of Italy?")              # the history goes with every turn
    session.reset()

    chat(model, [{"role": "user", "content": "Hi"}])      # one reply to a list of messages

Each turn renders the whole conversation with the model's chat template (minillm.chat:
tokenizer_config.json's or chat_template.jinja; a plain "<role>: <content>" form for models
without one), continues it with generate() through the model's decode plan, and stops at the
model's eos tokens (its generation_config.json and tokenizer) or, for the plain form, where
the model starts the next user turn. Sampling options default to the model's
generation_defaults(). Text streams as it is decoded, whole UTF-8 characters only, and never
shows the start of a stop string that then stops the reply.
"""
import codecs
import time
from dataclasses import dataclass

from minillm.chat import encode_prompt, render_conversation
from minillm.generate import generate
from minillm.sampling import StopStrings

__all__ = ["ChatSession", "Reply", "chat"]


class _ReplyDone(Exception):
    """Raised from generate()'s stream callback when the reply's text reaches a stop string:
    the one matcher (the streaming StopStrings) ends the loop."""


@dataclass
class Reply:
    """One assistant turn: its text, tokens generated, seconds, and why it ended ("stop": an
    eos token or stop string; "length": max_new_tokens; "interrupted": stop_reply())."""
    text: str
    tokens: int
    seconds: float
    finish_reason: str

    @property
    def tokens_per_second(self):
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


class ChatSession:
    """A conversation with `model` (see the module docstring). decoder: a decode plan to reuse
    (e.g. model.decoder(weights="int8")); system: a system prompt; max_new_tokens: the longest
    reply; temperature, top_p, top_k, repetition_penalty: None takes the model's defaults;
    generator: a minillm.Generator for the draws."""

    def __init__(self, model, tokenizer, decoder=None, system=None, max_new_tokens=512, temperature=None,
                 top_p=None, top_k=None, repetition_penalty=None, generator=None):
        if tokenizer is None:
            raise ValueError("ChatSession: the model has no tokenizer to turn text into ids")
        self.model, self.tokenizer = model, tokenizer
        self.decoder = decoder if decoder is not None or model.kv_cache_shape() is None else model.decoder()
        self.max_new_tokens = max_new_tokens
        d = model.generation_defaults()
        given = {"temperature": temperature, "top_p": top_p, "top_k": top_k,
                 "repetition_penalty": repetition_penalty}
        self.options = {k: (v if v is not None else d.get(k)) for k, v in given.items()}
        self.options["repetition_penalty"] = self.options["repetition_penalty"] or 1.0
        self.greedy = temperature is None and d.get("greedy", False)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.stop_tokens = tuple(dict.fromkeys(list(d.get("stop_tokens") or ()) + ([eos] if isinstance(eos, int) else [])))
        self.generator = generator
        self.system = system
        self.messages = []
        self._partial = None          # the reply being generated: [text so far, tokens]

    def reset(self):
        """Forget the conversation (the system prompt stays)."""
        self.messages = []

    def set_system(self, text):
        """A new system prompt (None: none); the conversation starts over."""
        self.system = text
        self.reset()

    def history(self):
        """The messages the next turn renders: the system prompt, then every turn so far."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def send(self, text, stream=None):
        """Add the user's `text`, generate the assistant's reply (stream(piece) receives its
        text as it comes), add it to the history and return it as a Reply. A
        KeyboardInterrupt raised while generating leaves the reply so far for stop_reply()."""
        self.messages.append({"role": "user", "content": text})
        prompt, rendered, extra_stop = render_conversation(self.tokenizer, self.history())
        ids = prompt if isinstance(prompt, list) else encode_prompt(self.tokenizer, prompt, rendered)
        room = self.model.config.block_size - len(ids)
        if room < 1:
            self.messages.pop()
            raise ValueError(f"the conversation ({len(ids)} tokens) fills the model's context of "
                             f"{self.model.config.block_size}: /reset to start over")
        stops = StopStrings(extra_stop) if extra_stop else None
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        state = self._partial = {"text": "", "raw": "", "consumed": 0, "tokens": 0, "stopped": False,
                                 "start": time.perf_counter()}

        def on_step(new_ids):
            tid = new_ids[0]
            if state["stopped"] or tid in self.stop_tokens:
                state["stopped"] = True
                return
            state["tokens"] += 1
            state["raw"] += utf8.decode(self._token_bytes(tid))
            if stops is None:
                piece = state["raw"][state["consumed"]:]
                state["consumed"] = len(state["raw"])
            else:
                piece = stops.push(state["raw"])
                state["stopped"] = stops.stopped
            if not state["text"]:
                piece = piece.lstrip()           # a reply starts at its first visible character
            state["text"] += piece
            if piece and stream is not None:
                stream(piece)
            if state["stopped"]:
                raise _ReplyDone        # a stop string: end the decoding loop at this token

        try:
            generate(self.model, [ids], min(self.max_new_tokens, room), temperature=self.options["temperature"],
                     top_k=self.options["top_k"], top_p=self.options["top_p"], greedy=self.greedy,
                     repetition_penalty=self.options["repetition_penalty"], stop_tokens=self.stop_tokens,
                     generator=self.generator, stream=on_step, decoder=self.decoder)
        except _ReplyDone:
            pass
        if stops is not None and not stops.stopped:
            tail = stops.flush()
            tail = tail.lstrip() if not state["text"] else tail
            state["text"] += tail
            if tail and stream is not None:
                stream(tail)
        reason = "stop" if state["stopped"] else "length"
        return self._finish(reason)

    def stop_reply(self):
        """After a KeyboardInterrupt in send(): keep the reply so far in the history."""
        if self._partial is not None:
            return self._finish("interrupted")
        return None

    def _finish(self, reason):
        state, self._partial = self._partial, None
        reply = Reply(state["text"].strip(), state["tokens"], time.perf_counter() - state["start"], reason)
        self.messages.append({"role": "assistant", "content": reply.text})
        return reply

    def _token_bytes(self, tid):
        if hasattr(self.tokenizer, "decode_bytes"):
            return self.tokenizer.decode_bytes([tid])
        return self.tokenizer.decode([tid]).encode("utf-8")


def chat(model, messages, tokenizer=None, **options):
    """The assistant's reply (str) to `messages` ([{"role", "content"}], a system message
    first if any) from `model`; options as ChatSession's."""
    session = ChatSession(model, tokenizer or model.tokenizer, **options)
    if messages and messages[0].get("role") == "system":
        session.system, messages = messages[0]["content"], messages[1:]
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("chat: the last message must be the user's")
    session.messages = [dict(m) for m in messages[:-1]]
    return session.send(messages[-1]["content"]).text
