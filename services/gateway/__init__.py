"""The REST/JSON gateway: transcodes HTTP to the gRPC services from the
google.api.http annotations in their descriptors, serves the OpenAPI document,
health endpoints and server-sent events for streaming RPCs."""
