"""Role bindings, groups and subject attributes: the YAML document form and (later) SQL."""
