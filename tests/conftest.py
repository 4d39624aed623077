"""Shared fixtures (helpers live in tests/helpers.py)."""
import logging
import os
import tempfile

import pytest

logging.getLogger("apache_beam").setLevel(logging.ERROR)

# `datasets` caches what it loads by path: pytest reuses its tmp folder names between runs, so a stale cache
# could answer for a rebuilt output. Every test session gets its own cache, and nothing asks the Hub.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="groundforge-test-datasets-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def coco_dir(tmp_path):
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module: tiny models are dominated by thread overhead, and on shared CI cores
    one thread is ~30x faster. Train test modules use it through `pytestmark`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight tiny Florence-2 checkpoint directory (built once per session)."""
    from train_fixtures import tiny_florence2

    return tiny_florence2(tmp_path_factory)
