"""The `runyard` command line."""
