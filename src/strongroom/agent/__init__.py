"""The agent: what runs on a protected machine (home, backup, restore, check)."""
