"""The pipeline's stages (steps.py: one `stage_NAME` function each) and the code each runs."""
