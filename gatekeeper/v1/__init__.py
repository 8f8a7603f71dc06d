"""Generated gRPC code for gatekeeper.v1 (see scripts/proto); do not edit."""
