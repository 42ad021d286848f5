"""Admin operations on keys and accounts, one service (service.AdminService) the CLI and the web page both call."""
