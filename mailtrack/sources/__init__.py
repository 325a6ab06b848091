"""The network edges: where mail comes in."""
