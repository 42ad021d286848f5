"""claude-relay's domain: keys, accounts, scheduling, usage, pricing and the store. No mitmproxy here."""
