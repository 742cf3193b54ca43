"""Branches, commits and pull requests made by the daemon on the agent's behalf."""
