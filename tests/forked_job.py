"""Not a test: the job tests/test_local_executor.py starts as ``python -m forked_job ARGS``.

It prints, as JSON, what its process saw, sleeps if asked, and exits with the code asked for."""

import json
import os
import sys
import time

print(json.dumps({"argv": sys.argv[1:], "torch_loaded": "torch" in sys.modules,
                  "probe": os.environ.get("VITMED_PROBE"), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "pid": os.getpid()}), flush=True)
time.sleep(float(os.environ.get("VITMED_PROBE_SLEEP", "0")))
sys.exit(int(os.environ.get("VITMED_PROBE_EXIT", "0")))
