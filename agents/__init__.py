"""Online agents (SB3) and the wrappers that feed them labelled rewards."""
