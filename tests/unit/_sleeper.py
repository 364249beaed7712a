"""A stand-in hub service for tests/unit/test_process_launcher.py: slow imports, then a long sleep."""

import os
import sys
import time

if __name__ == "__main__":
    print(f"argv={sys.argv[1:]} hub_pid={os.environ.get('GPUHUB_HUB_PID')}", flush=True)
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 60)
