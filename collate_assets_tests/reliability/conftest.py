"""Fixtures for the reliability tests. The bad-input corpus, the demo tokenizer and the subprocess
helpers they use are plain functions in `collate_assets_tests.helpers`."""

from __future__ import annotations

import pytest

from collate_assets_tests.helpers import demo_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return demo_tokenizer()
