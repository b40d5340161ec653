"""Records to token sequences: the tokenizer and its bounded chat template, rendering, encoding, labels (what is
trained), the supervision audit, and the tokenizing step that writes the spill."""
