# Stand-in: monitor
