"""The package that holds filters written for courier-pythonfilter 3.0.6.

The original installed its filters as ``pythonfilter.<name>`` and ``pythonfilter.conf``
names them without the prefix.  courier-pyfilter's loader imports ``pythonfilter.<name>``
as its last resort, so old filters keep working when they are placed:

* in a directory listed in the environment variable ``PYTHONFILTER_LEGACY_PATH``
  (colon-separated; read when this package is first imported, i.e. at daemon start):
  ``/usr/local/lib/pythonfilter-legacy/myfilter.py`` is then ``pythonfilter.myfilter``;
* or in any directory of the daemon's ``filter_path`` setting (searched first);
* or installed into this package's directory.

The original's storage helper is here too: :mod:`pythonfilter.ttldb`.
"""

from __future__ import annotations

import os

LEGACY_PATH_ENV = "PYTHONFILTER_LEGACY_PATH"
"""Environment variable with extra directories searched for ``pythonfilter.<name>``."""


def _extend_path(path: list[str], value: str | None) -> list[str]:
    """``path`` plus the absolute directories of ``value`` (colon-separated), no duplicates."""
    result = list(path)
    for directory in (value or "").split(":"):
        if directory:
            absolute = os.path.abspath(directory)
            if absolute not in result:
                result.append(absolute)
    return result


__path__ = _extend_path(list(__path__), os.environ.get(LEGACY_PATH_ENV))
