"""The gRPC API: servicer, request and response conversion, callers, handlers."""
