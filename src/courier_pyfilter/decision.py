"""The typed result of a filter: what the chain should do with a message.

A filter returns one :class:`Decision`.  Its :attr:`~Decision.verdict` says what happens
next and its :attr:`~Decision.code` and :attr:`~Decision.lines` are the exact SMTP-style
reply that Courier relays to the client when the decision ends the chain.

The five verdicts map onto courierfilter's reply classes:

==========================  =========================  ==========================================
verdict                     typical reply              effect
==========================  =========================  ==========================================
``CONTINUE``                (none)                     the next filter runs
``ACCEPT``                  ``200 Ok``                 later filters are skipped (a whitelist);
                                                       with a ``for`` clause only the named ones
``ACCEPT_SKIP_COURIER``     ``050 OK``                 accepted, and Courier's other global
                                                       filters are skipped too (after quarantine)
``TEMPFAIL``                ``451 ...``                the client must retry later
``REJECT``                  ``554 ...``                refused permanently
==========================  =========================  ==========================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "CONTINUE",
    "Decision",
    "ReplyFormatError",
    "Verdict",
]


class ReplyFormatError(ValueError):
    """A reply code or text that courierfilter could not carry."""


class Verdict(enum.Enum):
    """What the chain does after a filter's decision."""

    CONTINUE = "continue"
    ACCEPT = "accept"
    ACCEPT_SKIP_COURIER = "accept-skip-courier"
    TEMPFAIL = "tempfail"
    REJECT = "reject"

    @property
    def is_final(self) -> bool:
        """True when the chain stops at this verdict (everything but ``CONTINUE``)."""
        return self is not Verdict.CONTINUE

    @property
    def delivers(self) -> bool:
        """True when the message is accepted (it ends, or may end, in delivery)."""
        return self in (Verdict.CONTINUE, Verdict.ACCEPT, Verdict.ACCEPT_SKIP_COURIER)


_FIRST_DIGIT_VERDICT = {
    "0": Verdict.ACCEPT_SKIP_COURIER,
    "1": Verdict.ACCEPT,
    "2": Verdict.ACCEPT,
    "3": Verdict.ACCEPT,
    "4": Verdict.TEMPFAIL,
    "5": Verdict.REJECT,
}


def _check_code(code: str) -> None:
    if len(code) != 3 or not code.isascii() or not code.isdigit():
        raise ReplyFormatError(f"reply code must be three digits, got {code!r}")


def _check_line(line: str) -> None:
    if "\n" in line or "\r" in line:
        raise ReplyFormatError(f"reply line must not contain a line break: {line!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """A filter's verdict together with its exact reply.

    Build one with the class methods (:meth:`accept`, :meth:`tempfail`, ...) rather than
    the constructor; they pick the conventional code and check the text.  ``code`` is the
    three-digit reply code as text (``"050"`` keeps its leading zero) and ``lines`` the
    reply text, one element per line.  ``CONTINUE`` has an empty code and no lines.
    """

    verdict: Verdict
    code: str = ""
    lines: tuple[str, ...] = ()
    _reply: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.verdict is Verdict.CONTINUE:
            if self.code or self.lines:
                raise ReplyFormatError("CONTINUE carries no reply")
            return
        _check_code(self.code)
        expected = _FIRST_DIGIT_VERDICT.get(self.code[0])
        if expected is not self.verdict:
            raise ReplyFormatError(f"code {self.code} does not match verdict {self.verdict.value}")
        if not self.lines:
            raise ReplyFormatError("a final decision needs at least one reply line")
        for line in self.lines:
            _check_line(line)
        last = len(self.lines) - 1
        object.__setattr__(
            self,
            "_reply",
            "\n".join(
                f"{self.code}{' ' if i == last else '-'}{line}" for i, line in enumerate(self.lines)
            ),
        )

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def continue_(cls) -> Decision:
        """No decision: the next filter runs.  Same as the module constant ``CONTINUE``."""
        return CONTINUE

    @classmethod
    def accept(cls, text: str | tuple[str, ...] = "Ok", code: str = "200") -> Decision:
        """Accept the message and skip the rest of the chain (a whitelist result)."""
        return cls(Verdict.ACCEPT, code, _as_lines(text))

    @classmethod
    def accept_skip_courier(cls, text: str | tuple[str, ...] = "OK", code: str = "050") -> Decision:
        """Accept, and tell Courier to skip its remaining global filters (a ``0xx`` reply)."""
        return cls(Verdict.ACCEPT_SKIP_COURIER, code, _as_lines(text))

    @classmethod
    def tempfail(cls, text: str | tuple[str, ...], code: str = "451") -> Decision:
        """Refuse for now; the client keeps the message and retries (a ``4xx`` reply)."""
        return cls(Verdict.TEMPFAIL, code, _as_lines(text))

    @classmethod
    def reject(cls, text: str | tuple[str, ...], code: str = "554") -> Decision:
        """Refuse permanently (a ``5xx`` reply)."""
        return cls(Verdict.REJECT, code, _as_lines(text))

    @classmethod
    def from_reply(cls, reply: str) -> Decision:
        """Parse an SMTP-style reply string, as the original's filters return them.

        ``''`` is ``CONTINUE``.  Multi-line replies (``"517-a\\n517 b"``) keep each line's
        text; the code is taken from the first line.  A trailing newline is ignored.
        Raises :class:`ReplyFormatError` when the text does not start with three digits.
        """
        if reply == "":
            return CONTINUE
        text = reply[:-1] if reply.endswith("\n") else reply
        raw_lines = text.split("\n")
        first = raw_lines[0]
        code = first[:3]
        _check_code(code)
        verdict = _FIRST_DIGIT_VERDICT.get(code[0])
        if verdict is None:
            raise ReplyFormatError(f"reply code {code} is not a courierfilter reply class")
        lines: list[str] = []
        for raw in raw_lines:
            raw = raw.rstrip("\r")
            if len(raw) >= 3 and raw[:3].isdigit() and raw[:3].isascii():
                rest = raw[3:]
                if rest[:1] in ("-", " "):
                    rest = rest[1:]
                lines.append(rest)
            else:
                lines.append(raw)
        return cls(verdict, code, tuple(lines))

    # -- rendering ----------------------------------------------------------------------

    def reply(self) -> str:
        """The reply as courierfilter expects it: ``NNN-text`` lines, a final ``NNN text``.

        No trailing newline; the protocol layer adds it.  ``CONTINUE`` renders as ``""``.
        """
        return self._reply

    @property
    def text(self) -> str:
        """The reply text without codes, lines joined by a space (for log lines)."""
        return " ".join(self.lines)

    def __str__(self) -> str:
        return self.reply() or "(continue)"


def _as_lines(text: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(text, str):
        return tuple(text.split("\n"))
    return tuple(text)


CONTINUE = Decision(Verdict.CONTINUE)
"""The shared "no decision" value."""

OK = Decision(Verdict.ACCEPT, "200", ("Ok",))
"""``200 Ok``: the reply when every filter let the message through."""
