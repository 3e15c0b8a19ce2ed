"""The cluster roll-up processor: merges agents' window partials per AggregationRule and writes them."""
