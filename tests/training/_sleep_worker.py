"""Worker that never finishes on time: prints its pid, then sleeps (tests the time limit)."""

import os
import sys
import time

print(f"PID {os.getpid()}", flush=True)
time.sleep(float(sys.argv[1]))
