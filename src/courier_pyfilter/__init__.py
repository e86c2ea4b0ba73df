"""courier-pyfilter: asyncio filter server and framework for the Courier MTA."""

__version__ = "0.1.0"
