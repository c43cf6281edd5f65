"""The public API is what choreo/__init__.py says it is."""

import choreo


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ is sorted and names every public attribute of the package."""
    public = {name for name in vars(choreo) if not name.startswith("_")}
    modules = {"bus", "config", "consumer", "context", "deadletter", "errors", "events"}
    modules |= {"loader", "retry", "service", "topology", "transports"}
    assert set(choreo.__all__) - {"__version__"} == public - modules
    assert choreo.__all__ == sorted(choreo.__all__)


def test_every_error_derives_from_choreo_error() -> None:
    """One root for the whole error tree."""
    for name in ("ConfigurationError", "ConnectionFailed", "PublishError", "Reject"):
        assert issubclass(getattr(choreo, name), choreo.ChoreoError)
