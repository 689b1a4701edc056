"""The function diff engine (see engine.py for the passes, in order)."""
