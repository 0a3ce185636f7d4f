"""Neural-network building blocks (nequip's pattern: small composable modules, fields by name)."""
