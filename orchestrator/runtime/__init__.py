"""The supervision runtime: supervised children, their mailboxes and what bots share."""
