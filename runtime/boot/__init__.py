"""Boot protocols: how an image becomes guest memory and a CPU state at its entry."""
