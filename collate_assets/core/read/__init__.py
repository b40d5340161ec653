"""Reading: conversation files (containers) to normalised records (formats), in chunks (reader), big files as shards."""
