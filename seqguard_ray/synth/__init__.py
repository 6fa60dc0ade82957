"""The demo generator: realistic behaviour logs with labelled injected attacks."""
