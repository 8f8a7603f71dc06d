"""The settlement gatekeeper: practitioner payment-qualification checks for claims."""

__version__ = "0.1.0"
