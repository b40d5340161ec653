"""`collate_job`: tokenize and pack one input-file partition into every format, checks included."""

import dagster as dg

from .assets import PACKED_ASSETS, tokenized_conversations

# The observable source `raw_conversations` is not part of the job (it is observed, not
# materialized); the asset checks of the selected assets come along with them.
collate_job = dg.define_asset_job(
    name="collate_job",
    selection=dg.AssetSelection.assets(tokenized_conversations, *PACKED_ASSETS.values()),
    description="Tokenize one input file and write its packed rows in every format; runs the blocking checks.",
)
