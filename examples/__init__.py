"""Runnable examples of choreo in other frameworks; each one has its test under tests/."""
