"""Tests of collate_assets.core.pack."""
