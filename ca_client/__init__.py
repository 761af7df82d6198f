"""An async ACME (RFC 8555) client on httpx and cryptography."""
