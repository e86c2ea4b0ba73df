# ruff: noqa
# A filter written for courier-pythonfilter 3.0.6, snake_case style: rejects listed
# senders, otherwise tags the message with a header through courier.xfilter.XFilter.
# Settings come from [compat_snake.py] (read explicitly with get_module_config, as some
# users did, on top of the module globals the daemon sets).
# (Test fixture for tests/compat/test_compat_daemon.py: keep it in the old style.)

import sys

import courier.config
import courier.control
import courier.xfilter

tag_header = "X-Compat-Tag"
tag_value = "built-in default"
blocked_senders = []


def init_filter():
    config = courier.config.get_module_config("compat_snake.py")
    if "tag_header" in config:
        globals()["tag_header"] = config["tag_header"]
    sys.stderr.write("Initialized the compat_snake python filter\n")


def do_filter(body_path, control_paths):
    sender = courier.control.get_sender(control_paths)
    if sender in blocked_senders:
        return "550 5.7.1 sender %s is blocked" % sender
    recipients = courier.control.get_recipients(control_paths)
    try:
        xf = courier.xfilter.XFilter("compat_snake", body_path, control_paths)
    except courier.xfilter.InitError as e:
        return "451 4.3.0 %s" % e
    message = xf.get_message()
    message[tag_header] = "%s; rcpts=%d; ip=%s; me=%s" % (
        tag_value,
        len(recipients),
        courier.control.get_senders_ip(control_paths),
        courier.config.me(),
    )
    return xf.submit()
