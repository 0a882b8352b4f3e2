import logging
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny teacher needs far less than the default
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
logging.getLogger("httpx").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
