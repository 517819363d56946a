"""Command-line entry points of the attacks, the audit and the filter."""
