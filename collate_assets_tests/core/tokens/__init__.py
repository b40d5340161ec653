"""Tests of collate_assets.core.tokens."""
