"""Several training runs compared: what survives a change of seed."""
