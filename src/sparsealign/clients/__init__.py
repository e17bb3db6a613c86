"""Clients for external model endpoints (OpenAI-compatible chat APIs), with retries and a persistent cache."""

from sparsealign.clients.openai_compat import ChatClient, Completion, EndpointError, read_api_key

__all__ = ["ChatClient", "Completion", "EndpointError", "read_api_key"]
