"""The cluster roll-up processor: merges agents' window partials (a later issue)."""
