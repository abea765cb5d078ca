"""Everything VIRAL adds to training: layer capture, alignment projectors, losses, teachers."""
