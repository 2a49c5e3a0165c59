"""Aggregate training runs into the paper's tables and figures: ``python -m ambig.report <dir> ...``."""
