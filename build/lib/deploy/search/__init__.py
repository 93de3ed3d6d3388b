"""Search: the space of subnets, the selector under constraints, elastic precision, externally measured candidates."""
