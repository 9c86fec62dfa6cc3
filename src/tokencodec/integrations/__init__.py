"""Bridges to tools researchers already use (lmms-eval); each imports its tool only when used."""
