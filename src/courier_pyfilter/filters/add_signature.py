"""``add_signature``: append a per-domain signature to mail of authenticated senders.

The message is wrapped, as the original does, into a new ``multipart/mixed`` message:
the first part is the original content (its ``Content-Type``,
``Content-Transfer-Encoding``, ``Content-Disposition`` and ``Content-Description``
fields and its body), the second a ``text/plain; charset="utf-8"`` part, quoted-printable,
with the signature.  Every other header field (``Received``, ``From``, ``Subject``,
``DKIM-Signature``, ...) stays in the outer header, in its order and byte-for-byte;
``MIME-Version: 1.0`` and the new ``Content-Type`` end the outer header block.

Setting (section ``[add_signature.py]``):

``domains`` (default ``{'example.com': '/etc/courier/signatures/example.com'}``)
    Maps the domain of the SMTP AUTH user (the part after the first ``@``; compared
    without regard to case) to a signature file (UTF-8 text).  The key ``''`` is used
    for users without ``@``.  Users of other domains get no signature.
``max_size`` (default ``65536``)
    Largest signature file accepted, in bytes.

The file is read in a worker thread for each message (edits are seen at once); only
paths from this setting are opened, never anything taken from the message.  A
missing, unreadable, non-UTF-8, oversized or non-regular file is logged and the
message passes **unchanged**; an empty file means no signature.  The filter never
decides anything.

The body changes, so a DKIM signature made before the message reached Courier (by the
sender's mail program) no longer verifies: sign after filtering.
"""

from __future__ import annotations

import asyncio
import binascii
import os
import secrets
import stat
from collections.abc import Mapping
from typing import Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..edit import header_name, split_headers

INNER_HEADERS = frozenset(
    {b"content-type", b"content-transfer-encoding", b"content-disposition", b"content-description"}
)
"""Fields that stay with the original content (the first part)."""

DROPPED_HEADERS = frozenset({b"mime-version"})
"""Fields replaced by the new outer ``MIME-Version: 1.0``."""


class SignatureError(Exception):
    """The signature file cannot be used."""


def read_signature(path: str, max_size: int) -> str:
    """Read a signature file: a regular file of at most ``max_size`` bytes of UTF-8.

    CRLF becomes LF and a UTF-8 byte-order mark is dropped.  Blocking (run it in a
    worker thread).  Raises :class:`SignatureError`.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not hang the worker thread
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SignatureError(exc.strerror or str(exc)) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SignatureError("not a regular file")
        if info.st_size > max_size:
            raise SignatureError(f"larger than max_size ({max_size} bytes)")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, max_size + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_size:
                raise SignatureError(f"larger than max_size ({max_size} bytes)")
    except OSError as exc:
        raise SignatureError(exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
    try:
        text = b"".join(chunks).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SignatureError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    return text.replace("\r\n", "\n")


def signature_domain(auth_user: str) -> str:
    """The ``domains`` key for an auth user: the text after the first ``@``, else ``''``.

    As in the original, ``a@b@c`` gives ``b``.
    """
    parts = auth_user.split("@")
    return "" if len(parts) == 1 else parts[1]


def find_signature_path(domains: Mapping[str, str], domain: str) -> str | None:
    """The signature file for ``domain``: an exact key first, then ignoring case."""
    if domain in domains:
        return domains[domain]
    folded = domain.casefold()
    for key, path in domains.items():
        if key.casefold() == folded:
            return path
    return None


def _boundary(raw: bytes, extra: bytes) -> bytes:
    # "=_" cannot occur in quoted-printable or base64 text; the loop makes sure the
    # delimiter occurs nowhere in the message either
    while True:
        boundary = b"=_courier-pyfilter_" + secrets.token_hex(12).encode("ascii")
        if boundary not in raw and boundary not in extra:
            return boundary


def wrap_with_signature(raw: bytes, signature: str) -> bytes:
    """Return ``raw`` wrapped into ``multipart/mixed`` with ``signature`` as second part.

    Works on the bytes: header fields are moved, never re-generated.  The header block
    ends at the empty line or at the first line that is not a header field (as a MIME
    parser sees it); anything after it is the original body, kept exactly.
    """
    fields, rest = split_headers(raw)
    split_at = next((i for i, f in enumerate(fields) if header_name(f) is None), len(fields))
    if split_at < len(fields):
        body = b"\n" + b"".join(fields[split_at:]) + rest
        fields = fields[:split_at]
    else:
        body = rest if rest else b"\n"
    outer: list[bytes] = []
    inner: list[bytes] = []
    for field in fields:
        name = header_name(field)
        if name in INNER_HEADERS:
            inner.append(field)
        elif name not in DROPPED_HEADERS:
            outer.append(field)
    if outer and not outer[-1].endswith(b"\n"):
        outer[-1] += b"\n"
    if inner and not inner[-1].endswith(b"\n"):
        inner[-1] += b"\n"
    if not body.endswith(b"\n"):
        body += b"\n"
    text = signature.encode("utf-8")
    qp = binascii.b2a_qp(text, quotetabs=False, istext=True, header=False)
    part1 = b"".join(inner) + body
    boundary = _boundary(raw, qp)
    outer_cte = b""
    if any(byte >= 0x80 for byte in part1):
        outer_cte = b"Content-Transfer-Encoding: 8bit\n"
    return b"".join(
        [
            *outer,
            b"MIME-Version: 1.0\n",
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\n',
            outer_cte,
            b"\n",
            b"--" + boundary + b"\n",
            part1,
            b"\n--" + boundary + b"\n",
            b'Content-Type: text/plain; charset="utf-8"\n',
            b"Content-Transfer-Encoding: quoted-printable\n",
            b"\n",
            qp,
            b"\n--" + boundary + b"--\n",
        ]
    )


def _check_settings(settings: Mapping[str, Any]) -> None:
    domains = settings["domains"]
    if not isinstance(domains, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in domains.items()
    ):
        raise ValueError(
            f"[add_signature.py] domains must map domain names to file names, got {domains!r}"
        )
    max_size = settings["max_size"]
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"[add_signature.py] max_size must be a positive int, got {max_size!r}")


class AddSignature(Filter):
    """Appends the configured signature as a second MIME part."""

    defaults = {
        "domains": {"example.com": "/etc/courier/signatures/example.com"},
        "max_size": 65536,
    }

    async def start(self) -> None:
        _check_settings(self.settings)

    async def check(self, message: Message, ctx: Context) -> Decision:
        user = message.auth_user
        if not user:
            return CONTINUE
        domain = signature_domain(user)
        path = find_signature_path(ctx.settings["domains"], domain)
        if path is None:
            return CONTINUE
        try:
            signature = await asyncio.to_thread(read_signature, path, ctx.settings["max_size"])
        except SignatureError as exc:
            ctx.log.warning(
                "add_signature filter: cannot use signature file %s for domain %r: %s; "
                "message %s not changed",
                path,
                domain,
                exc,
                message.msgid,
            )
            return CONTINUE
        if not signature:
            return CONTINUE
        await message.edit.replace_message(wrap_with_signature(await message.raw(), signature))
        ctx.log.debug("add_signature filter: added the signature %s to %s", path, message.msgid)
        return CONTINUE
