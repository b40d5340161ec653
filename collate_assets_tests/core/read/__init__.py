"""Tests of collate_assets.core.read."""
