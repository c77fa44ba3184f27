"""Who the client is: principals (authentication arrives with the auth issue)."""
