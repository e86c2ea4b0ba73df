"""courier-pyfilter-recipient-limit: an example third-party filter for courier-pyfilter.

The filter itself is :class:`~courier_pyfilter_recipient_limit.filter.RecipientLimit`;
courier-pyfilter finds it through the ``recipient_limit`` entry point of the
``courier_pyfilter.filters`` group declared in ``pyproject.toml``.
"""

from __future__ import annotations

from .filter import RecipientLimit, RecipientLimitConfigError

__all__ = ["RecipientLimit", "RecipientLimitConfigError", "__version__"]

__version__ = "1.0.0"
