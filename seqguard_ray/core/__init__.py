"""The framework-free core: schema and validation, tokens, encoder, features, detectors, explain, repair, bundle.

Nothing here imports Ray, gRPC or the CLI (tests/test_architecture.py checks it)."""
