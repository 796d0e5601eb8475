"""settle_heap: what start-up allocated leaves the cyclic collector's scans; later garbage is still collected."""

import subprocess
import sys

PROGRAM = """
import gc, weakref
from gateway.app import settle_heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

before = cycle()
settle_heap()
assert gc.get_freeze_count() > 0, "nothing was frozen"
assert before() is None, "garbage from start-up survived settle_heap"
after = cycle()
gc.collect()
assert after() is None, "a cycle made after settle_heap was not collected"
print("ok")
"""


def test_settle_heap_freezes_startup_and_still_collects_later_cycles() -> None:
    # gc.freeze is process-wide: run it in a process of its own, not in the test runner.
    done = subprocess.run([sys.executable, "-c", PROGRAM], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
