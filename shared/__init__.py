"""The library every service uses: configuration, logging, the gRPC server
bootstrap, error mapping, request context and gRPC clients."""

__version__ = "0.1.0"
