# Stand-in: entra
