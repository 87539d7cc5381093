"""Backends produce tokens and hidden-state features for a generation request."""
