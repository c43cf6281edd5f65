"""``python -m choreo``: the same as the ``choreo`` command."""

from .cli import main

if __name__ == "__main__":
    main()
