"""Shared fixtures (helpers live in tests/helpers.py)."""
import logging

import pytest

logging.getLogger("apache_beam").setLevel(logging.ERROR)


@pytest.fixture
def coco_dir(tmp_path):
    return tmp_path
