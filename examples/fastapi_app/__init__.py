"""An orders web app on FastAPI that publishes, asks and handles events with choreo."""
