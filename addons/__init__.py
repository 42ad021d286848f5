"""claude-relay's mitmproxy addons: thin hook glue over relay_core."""
