"""One persona: the actor answering its messages, who may address it, and the commands users type."""
