"""gmia: audit face generators and split networks for leaks of the people they were trained on."""

__version__ = "0.1.0"
