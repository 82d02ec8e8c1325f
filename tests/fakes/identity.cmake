# Stand-in: identity
