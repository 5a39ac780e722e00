"""pytest plugin for `make mutation`: which test executes which line of one module.

Loaded with `-p tests.mutation.covermap` when MUTATION_COVER_SOURCE names source files (os.pathsep
between them); writes MUTATION_COVER_OUT (JSON): for each file and each executed line the node ids of the tests that ran it ("" for
import time), each test's duration and outcome. The mutation run uses it to give each mutant only
the tests that can see it, fastest first. Lines run in another process are not seen (a mutant there
is reported as covered by no test, i.e. survived, never as killed).
"""

from __future__ import annotations

import json
import os
import time

import coverage
import pytest

SOURCE = os.environ.get("MUTATION_COVER_SOURCE")
_cov = None
_tests: dict[str, dict] = {}

if SOURCE:
    # Started at plugin import, before conftest and the test modules import the source.
    _cov = coverage.Coverage(data_file=None, include=[os.path.abspath(p) for p in SOURCE.split(os.pathsep)],
                             config_file=False)
    _cov.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _cov is None:
        yield
        return
    _cov.switch_context(item.nodeid)
    started = time.perf_counter()
    yield
    _cov.switch_context("")
    _tests.setdefault(item.nodeid, {})["seconds"] = round(time.perf_counter() - started, 3)


def pytest_runtest_logreport(report):
    if _cov is not None and report.failed:
        _tests.setdefault(report.nodeid, {})["failed"] = True


def pytest_unconfigure(config):
    if _cov is None:
        return
    _cov.stop()
    data = _cov.get_data()
    files = {}
    for source in SOURCE.split(os.pathsep):
        path = os.path.abspath(source)
        by_line = data.contexts_by_lineno(path) if path in data.measured_files() else {}
        files[source] = {str(n): sorted(c) for n, c in by_line.items()}
    out = {"files": files, "tests": _tests}
    with open(os.environ["MUTATION_COVER_OUT"], "w") as f:
        json.dump(out, f)
