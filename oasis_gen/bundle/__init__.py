"""The bundle glue: where the configs are, what the configs call to check their overrides, and export."""
