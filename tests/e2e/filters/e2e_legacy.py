"""e2e test filter in the original courier-pythonfilter style (``do_filter``).

Checks that it was handed a readable data file and control files, then rejects with
``550 legacy says no``; if the files are not there it answers a 451 naming the problem.
"""

import os


def do_filter(body_path, control_paths):  # type: ignore[no-untyped-def]
    """Return an SMTP reply string, as filters for the original do."""
    if not os.access(body_path, os.R_OK):
        return f"451 e2e_legacy: data file {body_path} not readable"
    if not control_paths or not all(os.access(p, os.R_OK) for p in control_paths):
        return f"451 e2e_legacy: control files missing: {control_paths!r}"
    return "550 legacy says no"
