"""The release phase of the procfile-app: prints when it ran, and fails when FAIL_RELEASE is set.

The release Job and the web pods share no filesystem, so the order is read from the cluster: the Job
controller's `SuccessfulCreate` event for this pod comes before the Deployment's `ScalingReplicaSet`.
"""

from __future__ import annotations

import os
import sys
import time

from app import RELEASE

stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
if os.environ.get("FAIL_RELEASE"):
    print(f"release {RELEASE} failed at {stamp}: FAIL_RELEASE is set", flush=True)
    sys.exit(1)
print(f"release {RELEASE} ran at {stamp}", flush=True)
