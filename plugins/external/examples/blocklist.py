#!/usr/bin/env python3
"""A recipient blocklist for Sluice's external plugin, in Python 3 (stdlib only).

It refuses one address for good, defers another, and leaves a note on the
transaction for every recipient it judged. Run it from smtpd.toml:

    [plugins.blocklist]
    use = "external"
    command = ["python3", "plugins/external/examples/blocklist.py"]

The protocol (docs/plugins.md, "Plugins in any language"): one JSON object
per line. Sluice sends a hello, the program answers with the hooks it wants;
then each hook call is one request line, answered by one response line with
the same "id". Anything for a human goes to stderr: Sluice logs it.

When BLOCKLIST_TEST_FAULTS=1 is in the environment, two more addresses make
it misbehave on purpose, for the tests: crash@example.test exits without
answering, hang@example.test never answers.
"""

import json
import os
import sys
import time

REFUSED = {"blocked@example.test": "This mailbox is closed"}
DEFERRED = {"busy@example.test": "Mailbox busy, try again later"}
FAULTS = os.environ.get("BLOCKLIST_TEST_FAULTS") == "1"


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rcpt(req):
    rcpt = req["args"]["recipient"]
    key = rcpt.lower()  # the addresses above are ASCII
    if FAULTS and key == "crash@example.test":
        print("crashing on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if FAULTS and key == "hang@example.test":
        time.sleep(3600)
    if key in REFUSED:
        return {"code": "deny", "msg": REFUSED[key], "enhanced": "5.1.1",
                "notes": {"listed": rcpt}}
    if key in DEFERRED:
        return {"code": "denysoft", "msg": DEFERRED[key], "enhanced": "4.2.1",
                "notes": {"deferred": rcpt}}
    # No opinion: the next plugin (rcptok) decides.
    return {"code": "declined", "notes": {"checked": len(req["transaction"]["recipients"]) + 1}}


def main():
    hello = json.loads(sys.stdin.readline() or "{}")
    if hello.get("sluice") != 1:
        print("unknown protocol version %r" % hello.get("sluice"), file=sys.stderr)
        return 1
    answer({"hooks": ["rcpt"]})
    for line in sys.stdin:  # ends at EOF: Sluice closed our input
        req = json.loads(line)
        res = {"code": "declined"}
        if req["hook"] == "rcpt":
            res = rcpt(req)
        res["id"] = req["id"]
        answer(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
