"""e2e test filter: quarantine every message whose Subject contains a marker.

A stand-in for ``clamav`` with ``action = 'quarantine'`` (no clamd needed): the
explanation names the EICAR test virus when the message carries the EICAR test string,
as clamav's would.  Settings (``[e2e_quarantine.py]``): ``marker`` (default
``QUARANTINE-ME``).
"""

from __future__ import annotations

from courier_pyfilter.api import CONTINUE, Context, Decision, Message
from courier_pyfilter.quarantine import quarantine_message

DEFAULTS = {"marker": "QUARANTINE-ME"}

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


async def check(message: Message, ctx: Context) -> Decision:
    """Quarantine marked messages; let everything else through."""
    marker = str(ctx.settings["marker"])
    subject = str((await message.headers()).get("Subject", ""))
    if marker not in subject:
        return CONTINUE
    if EICAR in await message.raw():
        reason = "The virus Eicar-Signature was found in the message"
    else:
        reason = f"The subject contains {marker}"
    return await quarantine_message(message, ctx, reason)
