"""Several recorder nodes as one fleet: placement, slots and request forwarding over Redis."""
