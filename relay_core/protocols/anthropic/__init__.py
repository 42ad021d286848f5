"""The Anthropic Messages API: routes, request bodies, usage, account health, credentials, errors."""
