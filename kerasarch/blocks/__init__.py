"""Block factories shared by the families: plain functions ``apply_<block>(x, ..., name=...)``."""
