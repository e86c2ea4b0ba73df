# ruff: noqa
# A filter written for courier-pythonfilter 3.0.6, camelCase style, as users wrote them:
# it counts messages per sender in a TtlDb and answers 421 above a limit.  Its settings
# are module globals, overridden from [compat_camel.py] in pythonfilter-modules.conf.
# (Test fixture for tests/compat/test_compat_daemon.py: keep it in the old style.)

import hashlib
import sys

import courier.config
import courier.control
import pythonfilter.ttldb

maxMessages = 100
rejectMessage = "slow down"
counterTtl = 60 * 60
counterPurgeInterval = 60 * 10

_counter = None


def initFilter():
    global _counter
    try:
        _counter = pythonfilter.ttldb.TtlDb("compat_counter", counterTtl, counterPurgeInterval)
    except pythonfilter.ttldb.OpenError:
        sys.stderr.write("Could not open the TtlDb for compat_camel\n")
        sys.exit(1)
    sys.stderr.write('Initialized the "compat_camel" python filter\n')


def doFilter(bodyFile, controlFileList):
    sender = courier.control.getSender(controlFileList)
    if sender is None:
        return ""
    key = hashlib.md5(sender.encode("utf-8")).hexdigest()
    _counter.purge()
    _counter.lock()
    try:
        if _counter.has_key(key):
            count = int(_counter[key]) + 1
        else:
            count = 1
        _counter[key] = count
    finally:
        _counter.unlock()
    if count > maxMessages:
        return "421 %s (%d messages from %s)" % (rejectMessage, count, sender)
    return ""
