"""Token ids to streamed text, with stop strings found across token boundaries.

    ts = TextStream(tokenizer, stop=["\\n\\n"])
    for tok in tokens:
        piece = ts.push(tok)        # text that is safe to send now ("" if held back)
        if ts.stopped:              # a stop string appeared: piece ends just before it
            break
    piece = ts.finish()             # whatever was held back (nothing once stopped)

Two things are held back: the bytes of a character split over byte-level tokens (sent once
the character is whole), and the end of the text while it could still be the start of a stop
string (so the client never sees a stop string, nor half of one).
"""
import codecs

__all__ = ["TextStream"]


class TextStream:
    """Incremental detokenization of one sequence (see the module docstring). tokenizer: any
    minillm tokenizer (decode_bytes is used when it has one; else decode of all the ids so far,
    which works for any tokenizer); stop: strings that end the text (not included)."""

    def __init__(self, tokenizer, stop=()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.stopped = False
        self.text = ""                   # everything sent so far
        self._pending = ""               # decoded, not yet sent
        self._ids = []
        self._decoded = ""               # decode(self._ids) without a trailing partial character
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace") \
            if hasattr(tokenizer, "decode_bytes") else None

    def push(self, token):
        """Add one generated id; returns the text that can be sent now."""
        if self.stopped:
            return ""
        if self._utf8 is not None:
            self._pending += self._utf8.decode(self.tokenizer.decode_bytes([token]))
        else:
            self._ids.append(token)
            full = self.tokenizer.decode(self._ids)
            if not full.endswith("\ufffd"):
                self._pending += full[len(self._decoded):]
                self._decoded = full
        return self._release(final=False)

    def finish(self):
        """The text held back at the end of the sequence (bytes of an unfinished character
        become U+FFFD, as decode does)."""
        if self.stopped:
            return ""
        if self._utf8 is not None:
            self._pending += self._utf8.decode(b"", final=True)
        elif self._ids:
            full = self.tokenizer.decode(self._ids)
            self._pending += full[len(self._decoded):]
            self._decoded = full
        return self._release(final=True)

    def _release(self, final):
        pending = self._pending
        hits = [i for i in (pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self._pending, self.stopped = pending[:min(hits)], "", True
        else:
            keep = 0 if final else self._held(pending)
            out, self._pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
        self.text += out
        return out

    def _held(self, pending):
        """Length of the longest end of `pending` that is the start of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(pending)), best, -1):
                if pending.endswith(s[:k]):
                    best = k
                    break
        return best
