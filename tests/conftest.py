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
