"""Rows to files: the output formats (Arrow, Parquet, msgpack, JSONL) written and read back."""
