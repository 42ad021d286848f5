"""What `relay status` and `relay doctor` find: every fact about a relay's setup as one check.

Checks only look. The store's secret fingerprint is read, never claimed (a new store stays new), a
missing server secret is reported, not generated, and the reachability probes are plain GETs that
carry no Anthropic credential (through an account's proxy, only that proxy's own credentials). The
one side effect is the embedded Valkey, which starts here as it does for every CLI command. No
secret value ends up in a report: settings are masked first, account secrets are only opened to see
that they still open.
"""
