"""How long a concurrent writer waits while ingest registers a large dataset on SQLite.

Registers N images (two findings, files that need not exist: only the registration is timed)
into a fresh SQLite registry in a child process, while this process tries a write
(``BEGIN IMMEDIATE``, 300 s busy timeout) every 50 ms and records how long each waited.
vitmed commits ``INSERT_BATCH`` images per transaction; the baseline is the same code with
one batch for everything (one transaction holding the write lock from start to end).

    python benchmarks/registration_lock.py [N]   (default 400000)
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

CHILD = """
import sys, time
from vitmed_cli.datasets import ingest
from vitmed_cli.registry.db import open_registry
db, home, csv, batch = sys.argv[1:5]
if int(batch):
    ingest.INSERT_BATCH = int(batch)
reg = open_registry('sqlite:///' + db, home=home)
records, source, policy, options = ingest._read('csv', csv, {})
t = time.perf_counter()
ingest._register(reg, name='big', fmt='csv', source=source, image_size=32, records=records,
                 label_policy=policy, options=options, cache_dir=reg.workspace.cache_dir)
print(f'{time.perf_counter() - t:.2f}')
"""


def measure(folder: str, csv: str, batch: int) -> tuple[float, float, int]:
    db = os.path.join(folder, f"r{batch}.db")
    home = os.path.join(folder, "home")
    subprocess.run([sys.executable, "-c", "import sys; from vitmed_cli.registry.db import open_registry; "
                    "open_registry('sqlite:///' + sys.argv[1], home=sys.argv[2])", db, home], check=True)
    waits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            conn = sqlite3.connect(db, timeout=300, isolation_level=None)
            t = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            waits.append(time.perf_counter() - t)
            conn.execute("ROLLBACK")
            conn.close()
            time.sleep(0.05)

    thread = threading.Thread(target=probe)
    thread.start()
    out = subprocess.run([sys.executable, "-c", CHILD, db, home, csv, str(batch)], check=True,
                         capture_output=True, text=True)
    stop.set()
    thread.join()
    return float(out.stdout.strip()), max(waits), len(waits)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
    with tempfile.TemporaryDirectory() as folder:
        csv = os.path.join(folder, "labels.csv")
        with open(csv, "w") as fh:
            fh.write("path,patient_id,Cardiomegaly,Edema\n")
            fh.writelines(f"img/{i:07d}.png,P{i // 3},{i % 2},{'' if i % 3 else 1}\n" for i in range(n))
        from vitmed_cli.datasets.ingest import INSERT_BATCH

        print(f"{n:,} images; a writer tries BEGIN IMMEDIATE every 50 ms")
        print("| registration | seconds | longest writer wait, s | writes |")
        print("|---|---|---|---|")
        for label, batch in ((f"vitmed, {INSERT_BATCH:,} per transaction", 0), ("baseline, one transaction", n)):
            seconds, longest, count = measure(folder, csv, batch)
            print(f"| {label} | {seconds:.1f} | {longest:.2f} | {count} |")


if __name__ == "__main__":
    main()
