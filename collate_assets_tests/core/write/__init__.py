"""Tests of collate_assets.core.write."""
