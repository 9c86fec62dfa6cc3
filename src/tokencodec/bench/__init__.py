"""Sweeps that turn knob values into curves, and the reports made of them."""
