"""The `relay` admin CLI."""
