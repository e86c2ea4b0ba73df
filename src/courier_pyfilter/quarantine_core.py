"""The pure parts of the quarantine: settings, ids, release tokens, index records, notices.

Nothing here does I/O; :mod:`courier_pyfilter.quarantine` stores messages, talks to the
store and to sendmail, and uses these helpers.

Release tokens
    An item's id is 12 random characters of the lower-case base32 alphabet (60 bits).
    The address a recipient mails to release it is
    ``quarantine-<siteid>-<id>-<mac>@<me>``, where ``<mac>`` is the first 20 base32
    characters (100 bits) of HMAC-SHA256 keyed by the site secret over the siteid, the
    id and that recipient's address (lower-cased).  Only the holder of the notice sent
    to a recipient knows it; it cannot be guessed from the id, and a token made for one
    recipient is worthless for another.  Tokens are compared with
    :func:`hmac.compare_digest`.  Both parts use only ``a-z`` and ``2-7``: no dots
    (Courier maps them to ``:`` in ``.courier`` file names), no hyphens, and case does
    not matter (Courier may lower-case local parts).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_DIR",
    "DEFAULT_SITEID",
    "ID_LENGTH",
    "INDEX_DB",
    "MAC_LENGTH",
    "QuarantineConfig",
    "QuarantineConfigError",
    "QuarantineRecord",
    "RecordError",
    "StoredRecipient",
    "clean_text",
    "config_from_sections",
    "control_name",
    "data_name",
    "format_expiry",
    "is_valid_id",
    "item_files",
    "item_id_of_file",
    "new_id",
    "normalize_address",
    "parse_config",
    "parse_token",
    "recipients_for_admin_release",
    "release_address",
    "release_mac",
    "release_token",
    "render_admin_notice",
    "render_notice",
    "render_release_failure",
    "token_matches",
]

DEFAULT_SITEID = "local"
"""The original's default ``siteid``."""
DEFAULT_DIR = "/var/lib/pythonfilter/quarantine"
"""The original's default storage directory."""
DEFAULT_DAYS = 14.0
"""The original's default retention in days."""
DEFAULT_SENDMAIL_TIMEOUT = 30.0
"""Seconds one notice (or released message) may take to hand to sendmail."""
SECRET_NAME = ".secret"
"""File name of the site secret inside ``dir`` (unless ``secret_file`` says otherwise)."""
INDEX_DB = "quarantine"
"""Name of the store database holding the quarantine index."""

ID_LENGTH = 12
"""Characters of an item id (60 random bits)."""
MAC_LENGTH = 20
"""Characters of a release MAC (100 bits of HMAC-SHA256)."""
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_ID_RE = re.compile(rf"[{_B32}]{{{ID_LENGTH}}}")
_TOKEN_RE = re.compile(rf"([{_B32}]{{{ID_LENGTH}}})-([{_B32}]{{{MAC_LENGTH}}})")
_SITEID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,39}")
_MAC_CONTEXT = b"courier-pyfilter quarantine release v1"

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


class QuarantineConfigError(ValueError):
    """A ``[quarantine]`` setting has a wrong type or value."""

    log_traceback = False


class RecordError(ValueError):
    """An index record cannot be read (corrupt or from an unknown version)."""

    log_traceback = False


# -- settings -------------------------------------------------------------------------------

_ALIASES = {
    "notifyRecipient": "notify_recipient",
    "alsoNotify": "also_notify",
    "userRelease": "user_release",
    "secretFile": "secret_file",
    "sendmailTimeout": "sendmail_timeout",
}
KNOWN_KEYS = frozenset(
    {
        "siteid",
        "dir",
        "days",
        "notify_recipient",
        "also_notify",
        "user_release",
        "sendmail",
        "sendmail_timeout",
        "secret_file",
    }
)
"""The ``[quarantine]`` keys (snake_case; the camelCase forms of the README are accepted)."""

_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off", ""})


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    """The ``[quarantine]`` (or ``[Quarantine]``) section, checked.

    ``ignored`` lists keys that were not understood (logged by the service, since a
    ``[DEFAULT]`` section may add keys to every section).
    """

    siteid: str = DEFAULT_SITEID
    """Part of the release address ``quarantine-<siteid>-...`` and of the alias file name."""
    dir: str = DEFAULT_DIR
    """Where the messages are stored (the index is in the store)."""
    days: float = DEFAULT_DAYS
    """Days an item is kept; after that it can no longer be released and is purged."""
    notify_recipient: bool = True
    """Send each recipient a notice."""
    also_notify: str | None = None
    """An address (an admin) that gets a notice of every quarantined message."""
    user_release: bool = True
    """Recipients may release a message to themselves by mail."""
    sendmail: str | None = None
    """The sendmail program; None finds Courier's (``/usr/sbin/sendmail`` first)."""
    sendmail_timeout: float = DEFAULT_SENDMAIL_TIMEOUT
    """Seconds one sendmail run may take."""
    secret_file: str | None = None
    """The site secret keying the release tokens; None: ``<dir>/.secret``."""
    ignored: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ttl(self) -> float:
        """Retention in seconds."""
        return self.days * 86400.0

    @property
    def secret_path(self) -> str:
        """The file holding the site secret."""
        if self.secret_file:
            return self.secret_file
        return self.dir.rstrip("/") + "/" + SECRET_NAME


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return False
    raise QuarantineConfigError(f"[quarantine] {key} must be True or False, not {value!r}")


def _address_setting(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise QuarantineConfigError(f"[quarantine] {key} must be an address string: {value!r}")
    text: str = value.strip()
    if (
        not text
        or text.startswith("-")
        or any(c.isspace() or ord(c) < 32 or c in "<>,;\"'" for c in text)
    ):
        raise QuarantineConfigError(f"[quarantine] {key} is not a plain address: {value!r}")
    return text


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuarantineConfigError(f"[quarantine] {key} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise QuarantineConfigError(f"[quarantine] {key} must be positive, not {value!r}")
    return number


def _path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise QuarantineConfigError(f"[quarantine] {key} must be an absolute path: {value!r}")
    return value


def parse_config(section: Mapping[str, Any]) -> QuarantineConfig:
    """Check one evaluated section and return the :class:`QuarantineConfig`.

    Keys may be written in snake_case (as the original's code reads them) or camelCase
    (as its README shows); writing both forms of one key with different values is an
    error.  Unknown keys are collected in :attr:`QuarantineConfig.ignored`.
    """
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in section.items():
        name = _ALIASES.get(key, key)
        if name not in KNOWN_KEYS:
            ignored.append(key)
            continue
        if name in values and values[name] != value:
            raise QuarantineConfigError(
                f"[quarantine] {name} is set twice with different values "
                f"(snake_case and camelCase): {values[name]!r} and {value!r}"
            )
        values[name] = value
    config = QuarantineConfig(ignored=tuple(ignored))
    changes: dict[str, Any] = {}
    if "siteid" in values:
        siteid = values["siteid"]
        if not isinstance(siteid, str) or not _SITEID_RE.fullmatch(siteid):
            raise QuarantineConfigError(
                "[quarantine] siteid must be 1-40 letters, digits, '_' or '-' "
                f"(it is part of an address and of a file name): {siteid!r}"
            )
        changes["siteid"] = siteid
    if "dir" in values:
        changes["dir"] = _path("dir", values["dir"]).rstrip("/") or "/"
    if "days" in values:
        changes["days"] = _positive("days", values["days"])
    if "notify_recipient" in values:
        changes["notify_recipient"] = _boolean("notify_recipient", values["notify_recipient"])
    if "user_release" in values:
        changes["user_release"] = _boolean("user_release", values["user_release"])
    if "also_notify" in values:
        changes["also_notify"] = _address_setting("also_notify", values["also_notify"])
    if values.get("sendmail") is not None:
        changes["sendmail"] = _path("sendmail", values["sendmail"])
    if "sendmail_timeout" in values:
        changes["sendmail_timeout"] = _positive("sendmail_timeout", values["sendmail_timeout"])
    if values.get("secret_file") is not None:
        changes["secret_file"] = _path("secret_file", values["secret_file"])
    return replace(config, **changes)


def config_from_sections(sections: Callable[[str], Mapping[str, Any]]) -> QuarantineConfig:
    """The configuration from ``[quarantine]``, or ``[Quarantine]`` when that is absent."""
    section = sections("quarantine")
    if not section:
        section = sections("Quarantine")
    return parse_config(section or {})


# -- ids, tokens, addresses -----------------------------------------------------------------


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def new_id() -> str:
    """A fresh random item id (:data:`ID_LENGTH` base32 characters)."""
    return _b32(secrets.token_bytes(8))[:ID_LENGTH]


def is_valid_id(text: object) -> bool:
    """True when ``text`` has the form of an item id (and so is safe in a file name)."""
    return isinstance(text, str) and _ID_RE.fullmatch(text) is not None


def _check_id(item_id: str) -> str:
    if not is_valid_id(item_id):
        raise ValueError(f"not a quarantine id: {item_id!r}")
    return item_id


def normalize_address(address: str) -> str:
    """The form addresses are compared and MACed in: stripped, ``rfc822;`` removed,
    lower-cased."""
    text = address.strip()
    if text[:7].lower() == "rfc822;":
        text = text[7:].strip()
    return text.lower()


def release_mac(secret: bytes, siteid: str, item_id: str, address: str) -> str:
    """The MAC that lets ``address`` release item ``item_id`` (see the module docstring)."""
    _check_id(item_id)
    message = b"\0".join(
        (
            _MAC_CONTEXT,
            siteid.encode("utf-8"),
            item_id.encode("ascii"),
            normalize_address(address).encode("utf-8", "surrogateescape"),
        )
    )
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return _b32(digest)[:MAC_LENGTH]


def release_token(secret: bytes, siteid: str, item_id: str, address: str) -> str:
    """``<id>-<mac>``: the part after ``quarantine-<siteid>-`` (Courier's ``$DEFAULT``)."""
    return f"{item_id}-{release_mac(secret, siteid, item_id, address)}"


def release_address(siteid: str, token: str, domain: str) -> str:
    """The address to mail to release an item: ``quarantine-<siteid>-<token>@<domain>``."""
    return f"quarantine-{siteid}-{token}@{domain}"


def parse_token(text: str) -> tuple[str, str] | None:
    """``(id, mac)`` from a token (case-insensitive), or None when it is malformed."""
    match = _TOKEN_RE.fullmatch(text.strip().lower())
    if match is None:
        return None
    return match.group(1), match.group(2)


def token_matches(secret: bytes, siteid: str, item_id: str, address: str, mac: str) -> bool:
    """True when ``mac`` is the release MAC of ``item_id`` for ``address``
    (constant-time comparison)."""
    expected = release_mac(secret, siteid, item_id, address)
    return hmac.compare_digest(expected.encode("ascii"), mac.lower().encode("ascii", "replace"))


# -- files ----------------------------------------------------------------------------------


def data_name(item_id: str) -> str:
    """File name of an item's data file: ``D<id>``."""
    return "D" + _check_id(item_id)


def control_name(item_id: str, index: int) -> str:
    """File name of an item's control file ``index``: ``C<id>``, then ``C<id>.1``, ..."""
    _check_id(item_id)
    if index < 0:
        raise ValueError(f"bad control file index {index}")
    return f"C{item_id}" if index == 0 else f"C{item_id}.{index}"


def item_files(item_id: str, controls: int) -> list[str]:
    """Every file name of an item with ``controls`` control files."""
    return [data_name(item_id), *(control_name(item_id, i) for i in range(controls))]


_FILE_RE = re.compile(
    rf"(?:D([{_B32}]{{{ID_LENGTH}}})|C([{_B32}]{{{ID_LENGTH}}})(?:\.[1-9][0-9]{{0,5}})?"
    rf"|tmp\.([{_B32}]{{{ID_LENGTH}}})\.[A-Za-z0-9.]+)"
)


def item_id_of_file(name: str) -> tuple[str, bool] | None:
    """``(id, is_temporary)`` for a file name this module creates, else None."""
    match = _FILE_RE.fullmatch(name)
    if match is None:
        return None
    if match.group(3):
        return match.group(3), True
    return (match.group(1) or match.group(2)), False


# -- index records --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRecipient:
    """A recipient of a quarantined message: ``r``, ``R`` and ``N`` records."""

    address: str
    original: str = ""
    notify: str = ""

    @property
    def original_address(self) -> str:
        """``R`` without ``rfc822;`` (case kept), or ``''``."""
        text = self.original.strip()
        if text[:7].lower() == "rfc822;":
            text = text[7:].strip()
        return text

    def matches(self, address: str) -> bool:
        """True when ``address`` is this recipient (``r`` or ``R``, ignoring case)."""
        wanted = normalize_address(address)
        if not wanted:
            return False
        if wanted == normalize_address(self.address):
            return True
        return bool(self.original) and wanted == normalize_address(self.original)


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """What the index keeps about one quarantined message (JSON in the store)."""

    id: str
    time: float
    expires: float
    sender: str
    recipients: tuple[StoredRecipient, ...]
    explanation: str
    header_from: str = ""
    subject: str = ""
    msgid: str = ""
    size: int = 0
    controls: int = 1
    host: str = ""
    released: Mapping[str, float] = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        """True once the item may no longer be released."""
        return now >= self.expires

    def notified_addresses(self) -> list[str]:
        """The distinct recipient addresses (``r``), in order, ignoring case."""
        seen: set[str] = set()
        result: list[str] = []
        for rcpt in self.recipients:
            key = normalize_address(rcpt.address)
            if key and key not in seen:
                seen.add(key)
                result.append(rcpt.address)
        return result

    def files(self) -> list[str]:
        """The item's file names in the quarantine directory."""
        return item_files(self.id, self.controls)

    def to_json(self) -> str:
        """The record as stored in the index."""
        return json.dumps(
            {
                "v": 1,
                "id": self.id,
                "time": self.time,
                "expires": self.expires,
                "sender": self.sender,
                "recipients": [[r.address, r.original, r.notify] for r in self.recipients],
                "explanation": self.explanation,
                "from": self.header_from,
                "subject": self.subject,
                "msgid": self.msgid,
                "size": self.size,
                "controls": self.controls,
                "host": self.host,
                "released": dict(self.released),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None, key: str) -> QuarantineRecord:
        """Read a stored record; raises :class:`RecordError` when it is unusable."""
        if text is None:
            raise RecordError(f"quarantine index entry {key!r} has no data")
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("v") != 1:
                raise RecordError(f"quarantine index entry {key!r}: unknown format")
            item_id = raw["id"]
            if item_id != key or not is_valid_id(item_id):
                raise RecordError(f"quarantine index entry {key!r}: id mismatch")
            recipients = tuple(
                StoredRecipient(str(r[0]), str(r[1]), str(r[2])) for r in raw["recipients"]
            )
            controls = int(raw.get("controls", 1))
            if not 0 <= controls <= 100000:
                raise RecordError(f"quarantine index entry {key!r}: bad control count")
            released = raw.get("released") or {}
            return cls(
                id=item_id,
                time=float(raw["time"]),
                expires=float(raw["expires"]),
                sender=str(raw.get("sender", "")),
                recipients=recipients,
                explanation=str(raw.get("explanation", "")),
                header_from=str(raw.get("from", "")),
                subject=str(raw.get("subject", "")),
                msgid=str(raw.get("msgid", "")),
                size=int(raw.get("size", 0)),
                controls=controls,
                host=str(raw.get("host", "")),
                released={str(k): float(v) for k, v in dict(released).items()},
            )
        except RecordError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise RecordError(f"quarantine index entry {key!r} is corrupt: {exc}") from None


# -- notices --------------------------------------------------------------------------------


def format_expiry(ts: float) -> str:
    """A date in the original's notice format, e.g. ``Mon March 04, 2024`` (local time,
    English names whatever the locale)."""
    t = time.localtime(ts)
    return f"{_WEEKDAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d}, {t.tm_year}"


def clean_text(value: object, limit: int = 200) -> str:
    """A header value made safe for one line of a notice body."""
    text = "" if value is None else str(value)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _header_address(address: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in address) or not address:
        raise ValueError(f"bad notice address {address!r}")
    return address


def _mail(
    *,
    sender_domain: str,
    to: str,
    subject: str,
    body: str,
    now: float,
    auto: str,
    item_id: str | None,
) -> bytes:
    headers = [
        f"From: Mail Quarantine System <postmaster@{sender_domain}>",
        f"To: <{_header_address(to)}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <quarantine.{int(now)}.{secrets.token_hex(6)}@{sender_domain}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        f"Auto-Submitted: {auto}",
    ]
    if item_id is not None:
        headers.append(f"X-Quarantine-Id: {item_id}")
    text = "\n".join(headers) + "\n\n" + body.rstrip("\n") + "\n"
    return text.encode("utf-8", "surrogateescape")


def _summary(record: QuarantineRecord) -> list[str]:
    return [
        f"  Reason:   {clean_text(record.explanation, 300) or '(none given)'}",
        f"  From:     {clean_text(record.header_from) or '(no From header)'}",
        f"  Subject:  {clean_text(record.subject) or '(no Subject header)'}",
    ]


def render_notice(
    record: QuarantineRecord,
    *,
    to: str,
    me: str,
    now: float,
    release_to: str | None,
    contact: str,
) -> bytes:
    """The notice for recipient ``to``.

    ``release_to`` is the recipient's own release address, or None when users may not
    release (the notice then tells them to ask ``contact``).
    """
    lines = [
        "A message addressed to you was put in quarantine instead of being",
        "delivered to you.",
        "",
        *_summary(record),
        "",
        f"It is kept until {format_expiry(record.expires)}, and deleted after that.",
        "",
    ]
    if release_to is not None:
        lines += [
            "If you trust this message and want it delivered anyway, send an email",
            f"(any subject and content) from {to} to:",
            "",
            f"  {release_to}",
            "",
            "The message is then delivered to you as it was received.  Keep in mind",
            "that it was held back for the reason given above.",
        ]
    else:
        lines += [
            f"If you need this message, ask {contact} to release it",
            f"and quote its quarantine id {record.id}.",
        ]
    lines += ["", f"Quarantine id: {record.id}"]
    return _mail(
        sender_domain=me,
        to=to,
        subject="Quarantine notice",
        body="\n".join(lines),
        now=now,
        auto="auto-generated",
        item_id=record.id,
    )


def render_admin_notice(
    record: QuarantineRecord,
    *,
    to: str,
    me: str,
    now: float,
    users_notified: bool,
    users_may_release: bool,
) -> bytes:
    """The notice for the ``also_notify`` address: every recipient, and how to release."""
    recipients = record.notified_addresses()
    lines = [
        "A message was put in quarantine instead of being delivered.",
        "",
        *_summary(record),
        f"  Sender:   <{clean_text(record.sender)}>",
        f"  To:       {', '.join(clean_text(r) for r in recipients) or '(no recipients)'}",
        "",
        f"It is kept until {format_expiry(record.expires)}, and deleted after that.",
        "",
        "To deliver it to its recipients (or only to some: --to ADDRESS), run on",
        "the mail server:",
        "",
        f"  courier-pyfilter quarantine release {record.id}",
        "",
    ]
    if users_notified and users_may_release:
        lines.append("Each recipient was sent a notice and can release it to themselves.")
    elif users_notified:
        lines.append("Each recipient was sent a notice telling them to ask you.")
    else:
        lines.append("The recipients were not notified.")
    lines += ["", f"Quarantine id: {record.id}"]
    return _mail(
        sender_domain=me,
        to=to,
        subject="Quarantine notice",
        body="\n".join(lines),
        now=now,
        auto="auto-generated",
        item_id=record.id,
    )


def render_release_failure(*, to: str, me: str, now: float, contact: str) -> bytes:
    """The answer to a release request that was refused (whatever the reason, so that it
    tells nothing about which ids exist)."""
    lines = [
        "Your request to release a quarantined message was not carried out.",
        "",
        "No message is held in quarantine for you under the address you wrote to.",
        "It may have been kept longer than allowed and deleted, the address may",
        "be incomplete, or you wrote from another address than the one the",
        "quarantine notice was sent to: a message can only be released by writing",
        "from that address to the address given in its notice.",
        "",
        f"If you believe this is wrong, contact {contact}.",
    ]
    return _mail(
        sender_domain=me,
        to=to,
        subject="Quarantine release failed",
        body="\n".join(lines),
        now=now,
        auto="auto-replied",
        item_id=None,
    )


def recipients_for_admin_release(
    record: QuarantineRecord, wanted: Sequence[str] | None
) -> list[str]:
    """The addresses an admin release goes to: every recipient, or those of ``wanted``
    that are recipients.  Raises :class:`ValueError` naming an address that is not one."""
    if not wanted:
        return record.notified_addresses()
    result: list[str] = []
    for address in wanted:
        match = next((r for r in record.recipients if r.matches(address)), None)
        if match is None:
            raise ValueError(f"{address} is not a recipient of quarantined message {record.id}")
        if normalize_address(address) == normalize_address(match.address):
            target = match.address
        else:
            target = match.original_address
        if normalize_address(target) not in {normalize_address(a) for a in result}:
            result.append(target)
    return result
