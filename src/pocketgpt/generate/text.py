"""Text in and out of token generation: the prompt a sample starts from, and a stream of text pieces that ends
at the first stop string without ever sending part of one."""

from __future__ import annotations

TEXT_SAMPLE_TOKENS = 256


def default_length(block_size: int, documents: bool) -> int:
    """New tokens a sample gets unless told: a whole document's room, or TEXT_SAMPLE_TOKENS of continuous text."""
    return block_size if documents else TEXT_SAMPLE_TOKENS


def encode_prompt(tokenizer, text: str, documents: bool) -> list[int]:
    """The ids a sample starts from: BOS + text for a model of documents (lines mode); for continuous text,
    the text, or when it is empty BOS if the tokenizer has one, else a newline."""
    ids = tokenizer.encode(text)
    if documents:
        return [tokenizer.bos, *ids]
    if ids:
        return ids
    if tokenizer.bos is not None:
        return [tokenizer.bos]
    try:
        return tokenizer.encode("\n")
    except ValueError:
        return [0]


class TextStream:
    """Token ids in, text pieces out, ending at the first stop string (which is not sent).

    Text that could still turn out to be the start of a stop string is held back until it cannot, so a
    client never receives part of a stop string. The ids are decoded whole each time, so a multi-byte
    character split over BPE tokens comes out once complete.
    """

    def __init__(self, decode, stops: list[str] | tuple[str, ...] = ()):
        self.decode, self.stops = decode, [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """The text that is now safe to send after this token ('' while held back or after a stop)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        hits = [i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(text, min(hits))
        hold = 1 if text.endswith("\ufffd") else 0  # an incomplete multi-byte character
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:n]):
                    hold = n
                    break
        return self._send(text, len(text) - hold)

    def flush(self) -> str:
        """What is left once generation has ended without a stop string."""
        return "" if self.stopped else self._send(self.decode(self.ids), None)

    def _send(self, text: str, end: int | None) -> str:
        piece = text[self.sent:end]
        self.sent += len(piece)
        return piece
