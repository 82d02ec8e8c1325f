# Stand-in: aoai
