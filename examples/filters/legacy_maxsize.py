"""``legacy_maxsize``: a filter in the original courier-pythonfilter style.

It has a module-level ``do_filter(body_path, control_paths)`` returning an SMTP reply
string (``''`` = no decision) and keeps its settings in module globals, which are set
from ``[legacy_maxsize.py]`` before ``init_filter`` runs.  courier-pyfilter runs such
functions in a worker thread.
"""

import os
import sys

max_bytes = 10 * 1024 * 1024


def init_filter():
    sys.stderr.write('Initialized the "legacy_maxsize" python filter\n')


def do_filter(body_path, control_paths):
    if os.path.getsize(body_path) > max_bytes:
        return "552 5.3.4 Message too big for this system"
    return ""
