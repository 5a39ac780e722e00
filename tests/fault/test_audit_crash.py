"""kill -9 during load: the chain still verifies (the torn tail attested by the next segment) and
every record whose commit returned is on disk."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time

from ext_proc.audit.verify import verify_dir
from tests.support import REPO
from tests.unit.test_audit_chain import write_log


def test_kill_9_under_load_loses_no_committed_record(tmp_path):
    d = tmp_path / "audit"
    p = subprocess.Popen([sys.executable, "-m", "tests.fault.audit_writer", str(d), str(tmp_path / "k.pem")],
                         cwd=REPO, stdout=subprocess.PIPE)
    # Kill once the writer is well under way (200 acknowledged commits), not after a fixed time:
    # on a loaded machine the interpreter's start-up alone can take longer than a fixed pause.
    assert p.stdout is not None
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < 200 and time.monotonic() < deadline:
        if not select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate(timeout=10)
    acknowledged = {x for x in b"".join(seen).decode().split() + out.decode().split() if x.startswith("r")}
    assert len(acknowledged) > 100
    on_disk = set()
    for f in d.glob("*.jsonl"):
        for line in f.read_bytes().splitlines():
            try:
                on_disk.add(json.loads(line).get("request_id"))
            except json.JSONDecodeError:
                pass
    assert acknowledged <= on_disk
    write_log(d, n=1, key="k.pem")  # restart: a new segment, attesting any torn tail
    rep = verify_dir(d)
    assert rep.ok, rep.problem
