"""The public API is what choreo/__init__.py says it is."""

import types

import choreo


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ is sorted and names every public attribute of the package but its modules."""
    public = {
        name
        for name, value in vars(choreo).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(choreo.__all__) - {"__version__"} == public
    assert choreo.__all__ == sorted(choreo.__all__)


def test_every_error_derives_from_choreo_error() -> None:
    """One root for the whole error tree."""
    errors = [value for value in vars(choreo).values() if isinstance(value, type)]
    errors = [e for e in errors if issubclass(e, Exception)]
    assert len(errors) >= 9
    assert all(issubclass(e, choreo.ChoreoError) for e in errors)
