import pytest

from tests.support import start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The local stack of `make run` (ledgergate up) on free ports, shared by the e2e tests."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()
