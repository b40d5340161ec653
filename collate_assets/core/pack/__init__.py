"""Token sequences to rows: bin packing, the spill packed into an output, and mixes of several sources."""
