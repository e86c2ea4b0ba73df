"""``tag_header``: add a header to every message that reaches it, then continue.

A module-level filter function.  Settings (section ``[tag_header.py]``):

``name``, ``value``
    The header to add; ``{client_ip}`` and ``{helo}`` in ``value`` are replaced.

The header goes on top of the existing ones; the other headers stay byte-for-byte
unchanged, so DKIM signatures remain valid.
"""

from __future__ import annotations

from courier_pyfilter.api import CONTINUE, Context, Decision, Message

DEFAULTS = {"name": "X-Filtered-By", "value": "courier-pyfilter (client {client_ip}, helo {helo})"}


async def check(message: Message, ctx: Context) -> Decision:
    """Add the configured header; never decides anything."""
    ip = message.client_ip
    value = ctx.settings["value"].format(
        client_ip="unknown" if ip is None else ip, helo=message.helo or "unknown"
    )
    await message.edit.add_header(ctx.settings["name"], value)
    return CONTINUE
