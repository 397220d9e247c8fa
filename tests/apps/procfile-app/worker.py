"""The worker process of the procfile-app: a loop that says it is alive every few seconds.

With --once (the cron entry of .cupaas) it says so once and exits.
"""

from __future__ import annotations

import sys
import time

from app import RELEASE

while True:
    kind = "cron" if "--once" in sys.argv else "worker"
    print(f"{kind} {RELEASE} alive at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)
    if kind == "cron":
        break
    time.sleep(5)
