"""Fault injection into a real ledgergate worker, with no change to production code.

A test puts this directory on PYTHONPATH and sets LEDGERGATE_FAULT_DIR for `ledgergate up`; every
Python process it starts (the `up` parent and its `serve` workers) imports this module at start-up,
before ledgergate runs. A fault is switched on while a file of its name exists in that directory,
so the stack starts healthy (genesis record, policy self-tests, warm-up) and the test decides when
the fault begins and ends:

  classifier_raises  Classifier.scan raises RuntimeError
  sink_fails         the file audit sink's write_batch raises OSError(ENOSPC), like a full disk
  policy_hangs       Policy.evaluate blocks (the worker's event loop with it) while the file exists,
                     bounded by MAX_HANG_S so a forgotten switch cannot wedge the test run

When the variable is unset this module does nothing, so the directory on PYTHONPATH is harmless.
"""

from __future__ import annotations

import errno
import os
import time

MAX_HANG_S = 30.0


def _install(fault_dir: str) -> None:
    from ext_proc.audit.log import FileSink
    from ext_proc.classify.engine import Classifier
    from ext_proc.policy.evaluation import Policy

    def on(name: str) -> bool:
        return os.path.exists(os.path.join(fault_dir, name))

    real_scan, real_write, real_evaluate = Classifier.scan, FileSink.write_batch, Policy.evaluate

    def scan(self, text, *args, **kwargs):
        if on("classifier_raises"):
            raise RuntimeError("injected classifier fault")
        return real_scan(self, text, *args, **kwargs)

    def write_batch(self, lines):
        if on("sink_fails"):
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return real_write(self, lines)

    def evaluate(self, input):  # noqa: A002 - the patched method's own parameter name
        deadline = time.monotonic() + MAX_HANG_S
        while on("policy_hangs") and time.monotonic() < deadline:
            time.sleep(0.05)
        return real_evaluate(self, input)

    Classifier.scan, FileSink.write_batch, Policy.evaluate = scan, write_batch, evaluate


if os.environ.get("LEDGERGATE_FAULT_DIR"):
    _install(os.environ["LEDGERGATE_FAULT_DIR"])
