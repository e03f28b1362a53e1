"""The Discord side: the client, dropping traffic for others, delivery, typing, streaming, text."""
