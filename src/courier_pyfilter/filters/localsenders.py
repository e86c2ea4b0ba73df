"""``localsenders``: a sender address in a local or hosted domain must be a real account.

The envelope sender is split at ``@``; anything but exactly two parts (the null sender
``<>``, an address without ``@``, a quoted local part holding an ``@``) is let through.
When the domain is local (Courier's ``locals``) the local part is looked up in
authdaemond with service ``smtp``; when it is a hosted domain (``hosteddomains``) the
whole address is; other domains are let through without a lookup.  Replies, as in
courier-pythonfilter:

* no such account: ``517 Sender does not exist: <sender>``;
* ``require_auth`` is true and the client did not use SMTP AUTH (no ``i`` control
  record; an empty one counts as authenticated):
  ``517 Policy requires local senders to authenticate.``;
* the control file names no sender: ``451 Internal failure locating control files``.

Deliberate difference: when authdaemond cannot be asked (down, timeout, garbage) the
message is refused for now with :data:`AUTHDAEMON_FAILURE` (the original let it pass).

Settings (section ``[localsenders.py]``): ``require_auth`` (default ``False``).  The
authdaemond client reads ``[authdaemon.py]``, see :mod:`courier_pyfilter.authdaemon`.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..authdaemon import AuthdaemonClient, AuthdaemonError, authdaemon_client, is_valid_name
from ..decision import CONTINUE, Decision
from ..message import MessageError

__all__ = ["AUTHDAEMON_FAILURE", "LocalSenders"]

AUTHDAEMON_FAILURE = Decision.tempfail(
    "4.4.3 Cannot verify the sender address now, try again later", code="451"
)
"""The answer when authdaemond fails: ``451 4.4.3 Cannot verify the sender address now,
try again later``."""
CONTROL_FAILURE = Decision.tempfail("Internal failure locating control files", code="451")
AUTH_REQUIRED = Decision.reject("Policy requires local senders to authenticate.", code="517")


class LocalSenders(Filter):
    """Refuses senders that claim a local or hosted domain but have no account there."""

    defaults = {"require_auth": False}
    client: AuthdaemonClient

    async def start(self) -> None:
        # Bad [authdaemon.py] settings stop the configuration from loading.
        self.client = await authdaemon_client(self.ctx)

    async def check(self, message: Message, ctx: Context) -> Decision:
        try:
            sender = message.sender
        except MessageError as exc:
            ctx.log.error("cannot read the control file(s) of %s: %s", message.data_path, exc)
            return CONTROL_FAILURE
        if sender is None:
            ctx.log.error("no sender record in the control file(s) of %s", message.data_path)
            return CONTROL_FAILURE
        parts = sender.split("@")
        if len(parts) != 2:
            return CONTINUE
        local, domain = parts
        courier = ctx.services.courier
        if courier.is_local(domain):
            account = local
        elif courier.is_hosteddomain(domain):
            account = sender
        else:
            return CONTINUE
        if is_valid_name(account):
            try:
                info = await self.client.user_info("smtp", account)
            except AuthdaemonError as exc:
                ctx.log.error("cannot look up sender %s: %s", sender, exc)
                return AUTHDAEMON_FAILURE
        else:
            info = None  # a name authdaemond cannot even be asked about is no account
        if info is None:
            return Decision.reject(f"Sender does not exist: {sender}", code="517")
        if ctx.settings["require_auth"] and message.auth_user is None:
            return AUTH_REQUIRED
        return CONTINUE
