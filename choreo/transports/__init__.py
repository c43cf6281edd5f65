"""Transports: the broker backends behind one small interface (see ``base.py``)."""
