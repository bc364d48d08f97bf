"""A conversation to prompt text: minillm.chat.render_conversation (the model's chat
template, or the plain "<role>: <content>" fallback), under the name the server uses."""
from minillm.chat import FALLBACK_STOP, render_conversation as render_chat

__all__ = ["render_chat", "FALLBACK_STOP"]
